//! What a sign-in with a provider hands back, and how it can fail.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use url::Url;

/// The start of a sign-in: where to send the browser, and the secrets to keep server-side
/// until the callback. Only the URL shows in `Debug`: the state, nonce and PKCE verifier are
/// what an attacker would need to complete someone else's sign-in.
#[derive(Clone)]
pub struct Authorization {
    pub url: Url,
    pub state: String,
    pub nonce: Option<String>,
    pub pkce_verifier: String,
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("url", &self.url.as_str())
            .field("state", &"<redacted>")
            .field("nonce", &self.nonce.as_ref().map(|_| "<redacted>"))
            .field("pkce_verifier", &"<redacted>")
            .finish()
    }
}

/// The provider's tokens, kept only when the provider is configured to keep them. Serde so
/// the caller can store them (sealed); `Debug` shows only whether each is there.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderTokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub scope: Option<String>,
}

impl fmt::Debug for ProviderTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderTokens")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

/// The user as the provider vouches for them, after every check this crate makes.
#[derive(Clone, Debug)]
pub struct ExternalProfile {
    /// The provider's stable id for the user (OIDC `sub`; the numeric id of the OAuth
    /// presets, as a decimal string). The only thing to link an account by.
    pub subject: String,
    pub email: Option<String>,
    /// True only when the provider says it checked the address (never for Naver, which
    /// does not say).
    pub email_verified: bool,
    pub name: Option<String>,
    /// The provider reports a multi-factor sign-in (OIDC `amr` holds `mfa`). The caller
    /// counts it only for providers configured to be trusted for that.
    pub provider_mfa: bool,
    pub tokens: ProviderTokens,
}

/// Why a call to a provider failed. The split decides what the circuit breaker counts:
/// only `Unavailable` says the provider is unhealthy; the others are answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Breaker open, timeout, connection error, 5xx, or discovery failed.
    #[error("the identity provider is unavailable")]
    Unavailable,
    /// The provider answered with an OAuth error (`invalid_grant`, `access_denied`, …).
    #[error("the identity provider refused: {code}")]
    Refused { code: String },
    /// The ID token failed a check (signature, iss, aud, azp, exp, iat, nonce). The reason is
    /// for logs and never holds the token.
    #[error("invalid ID token: {0}")]
    InvalidIdToken(String),
    /// The provider answered something this crate cannot use (malformed JSON, no subject,
    /// user info about another subject).
    #[error("invalid answer from the identity provider: {0}")]
    InvalidResponse(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_tokens_debug_hides_the_tokens() {
        let t = ProviderTokens {
            access_token: "at-secret-123".into(),
            refresh_token: Some("rt-secret-456".into()),
            expires_at: None,
            scope: Some("openid email".into()),
        };
        let d = format!("{t:?}");
        assert!(!d.contains("at-secret-123") && !d.contains("rt-secret-456"));
        assert!(d.contains("openid email"));
    }

    #[test]
    fn authorization_debug_shows_only_the_url() {
        let a = Authorization {
            url: Url::parse("https://idp.example/auth?client_id=x").unwrap(),
            state: "state-secret".into(),
            nonce: Some("nonce-secret".into()),
            pkce_verifier: "verifier-secret".into(),
        };
        let d = format!("{a:?}");
        assert!(d.contains("https://idp.example/auth"));
        for secret in ["state-secret", "nonce-secret", "verifier-secret"] {
            assert!(!d.contains(secret), "{secret} leaked: {d}");
        }
    }
}
