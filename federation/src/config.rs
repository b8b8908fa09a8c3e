//! What an operator configures per identity provider, and the checks made once at start so
//! that a misconfigured provider stops the server instead of failing a user's sign-in later.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

/// The kind of provider: decides the protocol (OIDC or plain OAuth), the default scopes and,
/// for the OAuth presets, the documented endpoints and how the profile is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    Google,
    Microsoft,
    Github,
    Kakao,
    Naver,
    /// Any OpenID Connect issuer found by discovery.
    Oidc,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Google => "google",
            Preset::Microsoft => "microsoft",
            Preset::Github => "github",
            Preset::Kakao => "kakao",
            Preset::Naver => "naver",
            Preset::Oidc => "oidc",
        }
    }

    /// OIDC presets sign in with an ID token checked against the issuer's keys; the others
    /// only have an access token and a profile endpoint.
    pub fn is_oidc(self) -> bool {
        matches!(self, Preset::Google | Preset::Microsoft | Preset::Oidc)
    }

    pub(crate) fn default_display_name(self) -> Option<&'static str> {
        match self {
            Preset::Google => Some("Google"),
            Preset::Microsoft => Some("Microsoft"),
            Preset::Github => Some("GitHub"),
            Preset::Kakao => Some("Kakao"),
            Preset::Naver => Some("Naver"),
            Preset::Oidc => None,
        }
    }

    /// The least each provider needs to give a subject and, where it can, an email.
    /// Naver takes no scope parameter: the app's permissions are set in its console.
    pub(crate) fn default_scopes(self) -> &'static [&'static str] {
        match self {
            Preset::Google | Preset::Microsoft | Preset::Oidc => &["openid", "email", "profile"],
            Preset::Github => &["read:user", "user:email"],
            Preset::Kakao => &["profile_nickname", "account_email"],
            Preset::Naver => &[],
        }
    }

    /// Google has one issuer; Microsoft's depends on the tenant and a generic issuer is
    /// whatever the operator names, so those two must be configured.
    pub(crate) fn default_issuer(self) -> Option<&'static str> {
        match self {
            Preset::Google => Some("https://accounts.google.com"),
            _ => None,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The preset name was none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider preset `{0}` (expected google, microsoft, github, kakao, naver or oidc)")]
pub struct UnknownPreset(pub String);

impl FromStr for Preset {
    type Err = UnknownPreset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "google" => Preset::Google,
            "microsoft" => Preset::Microsoft,
            "github" => Preset::Github,
            "kakao" => Preset::Kakao,
            "naver" => Preset::Naver,
            "oidc" => Preset::Oidc,
            other => return Err(UnknownPreset(other.to_owned())),
        })
    }
}

/// The OAuth client secret. Its `Debug` is redacted so that printing a configuration (or an
/// error that carries one) never leaks it into logs.
#[derive(Clone)]
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn new(secret: String) -> Self {
        ClientSecret(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// One provider as the operator configured it.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// The provider's name in routes (`/v1/auth/oauth/{name}/…`): `[a-z0-9-]{1,32}`.
    pub name: String,
    pub preset: Preset,
    /// Shown on the sign-in page; defaults per preset, else the name.
    pub display_name: Option<String>,
    pub client_id: String,
    pub client_secret: Option<ClientSecret>,
    /// `None`: the preset's default scopes.
    pub scopes: Option<Vec<String>>,
    /// OIDC presets: Google defaults to `https://accounts.google.com`; Microsoft and `oidc`
    /// need one. Refused for OAuth presets, which have no issuer.
    pub issuer: Option<Url>,
    /// OAuth presets only: replace the documented endpoints (tests point them at loopback).
    /// OIDC presets take their endpoints from discovery, so an override there is refused.
    pub authorize_url: Option<Url>,
    pub token_url: Option<Url>,
    pub userinfo_url: Option<Url>,
    /// The provider's own MFA claim counts as Keyledger's second factor.
    pub trust_mfa: bool,
    /// Keep the provider's tokens after sign-in (for later calls on the user's behalf).
    pub keep_tokens: bool,
}

/// Limits shared by every provider.
#[derive(Clone, Copy, Debug)]
pub struct FederationSettings {
    /// Each call to a provider (discovery, token, user info) gives up after this long.
    pub timeout: Duration,
    /// Consecutive failures that open a provider's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before letting one through.
    pub breaker_cooldown: Duration,
}

impl Default for FederationSettings {
    fn default() -> Self {
        FederationSettings {
            timeout: Duration::from_secs(10),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// A configuration that cannot work. Each names the provider and the problem, because the
/// operator reads it at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("provider name `{0}` is not [a-z0-9-]{{1,32}}")]
    BadName(String),
    #[error("provider `{0}` is configured twice")]
    DuplicateName(String),
    #[error("provider `{0}` ({1}) needs an issuer")]
    MissingIssuer(String, Preset),
    #[error("provider `{0}` ({1}) has no issuer: it is an OAuth preset")]
    IssuerNotAllowed(String, Preset),
    #[error("provider `{provider}`: {what} `{url}` must be https (plain http only on loopback)")]
    NotHttps {
        provider: String,
        what: &'static str,
        url: String,
    },
    #[error(
        "provider `{provider}`: the callback `{url}` must be https (plain http only on loopback)"
    )]
    CallbackNotHttps { provider: String, url: String },
    #[error(
        "provider `{provider}` ({preset}): {what} cannot be overridden, it comes from discovery"
    )]
    OverrideOnOidc {
        provider: String,
        preset: Preset,
        what: &'static str,
    },
    #[error("provider `{0}`: the client id is empty")]
    EmptyClientId(String),
    #[error("provider `{provider}`: {problem}")]
    Invalid { provider: String, problem: String },
}

/// Names appear in URLs and logs: a short fixed alphabet keeps them safe in both.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Codes and tokens cross these URLs, so they must be https; plain http is allowed only to
/// this machine (tests and a local provider), where nobody else is on the wire.
pub(crate) fn secure_url(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_from_their_names_and_back() {
        for p in [
            Preset::Google,
            Preset::Microsoft,
            Preset::Github,
            Preset::Kakao,
            Preset::Naver,
            Preset::Oidc,
        ] {
            assert_eq!(p.as_str().parse::<Preset>(), Ok(p));
        }
        assert!("Google".parse::<Preset>().is_err());
        assert!("facebook".parse::<Preset>().is_err());
    }

    #[test]
    fn only_google_microsoft_and_oidc_are_oidc() {
        assert!(Preset::Google.is_oidc() && Preset::Microsoft.is_oidc() && Preset::Oidc.is_oidc());
        assert!(!Preset::Github.is_oidc() && !Preset::Kakao.is_oidc() && !Preset::Naver.is_oidc());
    }

    #[test]
    fn names_follow_the_route_rule() {
        assert!(valid_name("google"));
        assert!(valid_name("corp-sso-2"));
        assert!(valid_name(&"a".repeat(32)));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(33)));
        assert!(!valid_name("Google"));
        assert!(!valid_name("my_idp"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("ünï"));
    }

    #[test]
    fn https_is_required_except_on_loopback() {
        let ok = |s: &str| secure_url(&Url::parse(s).unwrap());
        assert!(ok("https://example.com/token"));
        assert!(ok("http://127.0.0.1:8080/token"));
        assert!(ok("http://127.1.2.3/token"));
        assert!(ok("http://[::1]:9000/"));
        assert!(ok("http://localhost:3000/"));
        assert!(!ok("http://example.com/token"));
        assert!(!ok("http://10.0.0.1/token"));
        assert!(!ok("http://localhost.example.com/"));
        assert!(!ok("ftp://127.0.0.1/"));
    }

    #[test]
    fn client_secret_debug_is_redacted() {
        let s = ClientSecret::new("hunter2-very-secret".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
