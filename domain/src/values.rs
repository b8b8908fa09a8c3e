//! Value types that are parsed once at the edge and trusted everywhere after.

use std::fmt;

use chrono::Duration;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::personal::PersonalData;

/// Why a raw input was refused as a value; the API turns these into 422 answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("email address is not valid")]
    InvalidEmail,
    #[error("display name must be 1 to 100 printable characters")]
    InvalidDisplayName,
}

/// An email address in its canonical form (trimmed, lower-cased), so that two
/// spellings of one address can never become two accounts.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Longest address SMTP can carry (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;

    /// Normalises and checks an address; the shape check is deliberately modest
    /// (one `@`, non-empty parts, a dot-free-or-dotted domain without spaces):
    /// the only real proof of an address is a mail that arrives.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let normalised = raw.trim().to_lowercase();
        if normalised.is_empty() || normalised.len() > Self::MAX_LEN {
            return Err(ValueError::InvalidEmail);
        }
        if normalised
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ValueError::InvalidEmail);
        }
        let (local, domain) = normalised.split_once('@').ok_or(ValueError::InvalidEmail)?;
        if local.is_empty()
            || local.len() > 64
            || domain.is_empty()
            || domain.contains('@')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(ValueError::InvalidEmail);
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

/// A human-facing name; bounded so it cannot be used to bloat events or logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let trimmed = raw.trim();
        let count = trimmed.chars().count();
        if count == 0 || count > Self::MAX_CHARS || trimmed.chars().any(char::is_control) {
            return Err(ValueError::InvalidDisplayName);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A PHC-format password hash. It lives only inside stored events and aggregate
/// state: `Debug` hides it so it cannot reach a log by accident, and no integration
/// event or tool output ever includes it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn new(phc: String) -> Self {
        Self(phc)
    }

    pub fn expose_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// SHA-256 of an opaque refresh token. Only this digest is ever stored; equality is
/// constant-time so a comparison does not leak how many leading bytes matched.
#[derive(Clone, Copy, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

impl From<TokenHash> for String {
    fn from(value: TokenHash) -> Self {
        hex::encode(value.0)
    }
}

impl TryFrom<String> for TokenHash {
    type Error = hex::FromHexError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(value, &mut out)?;
        Ok(Self(out))
    }
}

/// Where a session was opened from, as the HTTP edge saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Personal data: sealed with the account's data key from `SessionStarted` 2.0.
    pub ip: Option<PersonalData>,
    pub user_agent: Option<PersonalData>,
}

impl Device {
    /// User agents are attacker-controlled; keep enough to recognise a device.
    pub const MAX_USER_AGENT: usize = 512;

    /// A device described in clear (readers, tests and events older than sealing).
    pub fn new(ip: Option<String>, user_agent: Option<String>) -> Self {
        Self {
            ip: ip.map(PersonalData::from),
            user_agent: user_agent.map(|ua| Self::bounded_user_agent(&ua).into()),
        }
    }

    /// The part of a user agent worth keeping.
    pub fn bounded_user_agent(user_agent: &str) -> String {
        user_agent.chars().take(Self::MAX_USER_AGENT).collect()
    }
}

/// How many consecutive failures lock an account, and for how long. Carried in the
/// command so the aggregate stays free of configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub duration: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            max_failures: 5,
            duration: Duration::minutes(30),
        }
    }
}

/// Why a session ended before its time; consumers act differently on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// The user ended it from the session list.
    UserRequest,
    /// An already-rotated refresh token was presented: the family is compromised.
    RefreshTokenReuse,
    /// The password changed, so sessions opened with the old one end.
    PasswordChanged,
    /// An operator ended it.
    Administrative,
    /// The account was erased.
    AccountErased,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_so_case_variants_are_one_address() {
        let a = Email::parse("  Alice@Example.COM ").unwrap();
        let b = Email::parse("alice@example.com").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "alice@example.com");
    }

    #[test]
    fn malformed_emails_are_refused() {
        for raw in [
            "",
            "no-at-sign",
            "@example.com",
            "alice@",
            "a@b@c",
            "a b@example.com",
            "alice@.example.com",
            "alice@example..com",
            "alice@example.com.",
            &format!("{}@example.com", "a".repeat(65)),
            &format!("a@{}.com", "b".repeat(260)),
            "nul\u{0}@example.com",
        ] {
            assert_eq!(Email::parse(raw), Err(ValueError::InvalidEmail), "{raw:?}");
        }
    }

    #[test]
    fn display_name_bounds() {
        assert!(DisplayName::parse(" Alice ").is_ok());
        assert!(DisplayName::parse("").is_err());
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"x".repeat(101)).is_err());
        assert!(DisplayName::parse("bell\u{7}").is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let hash = PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into());
        let token = TokenHash::from_bytes([7; 32]);
        let shown = format!("{hash:?} {token:?}");
        assert!(!shown.contains("argon2id"));
        assert!(!shown.contains("0707"));
    }

    #[test]
    fn token_hash_round_trips_as_hex() {
        let token = TokenHash::from_bytes([0xab; 32]);
        let json = serde_json::to_string(&token).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        let back: TokenHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, token);
        assert!(serde_json::from_str::<TokenHash>("\"abcd\"").is_err());
    }
}
