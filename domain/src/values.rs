//! Value types that are parsed once at the edge and trusted everywhere after.

use std::fmt;

use chrono::Duration;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};
use unicode_security::confusable_detection::skeleton;
use unicode_security::{GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection};

use crate::personal::PersonalData;

/// Why a raw input was refused as a value; the API turns these into 422 answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("email address is not valid")]
    InvalidEmail,
    #[error("display name must be 1 to 100 printable characters")]
    InvalidDisplayName,
}

/// An email address in its canonical form, so that two spellings of one address
/// can never become two accounts, and no address can pass for another one.
///
/// * Local part: an RFC 5322 dot-atom (letters, digits, ``!#$%&'*+-/=?^_`{|}~``,
///   dots between them), plus non-ASCII letters (RFC 6531) as UTS #39 allows them
///   in identifiers. Quoted local parts (`"a b"@x`) are refused: nothing reads
///   them alike. ASCII is lower-cased; non-ASCII is NFKC-normalised, then
///   lower-cased (so the fullwidth `ａｌｉｃｅ` *is* `alice`).
/// * Domain: UTS #46 (IDNA) with the strict DNS rules (letters, digits, hyphens,
///   labels of at most 63 bytes); kept in its Unicode form, lower case.
/// * Look-alikes are refused rather than mapped: a local part or domain label that
///   mixes scripts beyond UTS #39 "highly restrictive" (a Cyrillic `а` among Latin
///   letters), or that is non-ASCII yet made only of letters confusable with ASCII
///   ones (an all-Cyrillic `аlісе`), would show as another address.
///
/// A plain ASCII address keeps exactly the canonical form it had before these rules
/// (trimmed, lower-cased), so stored digests still match. The only real proof of an
/// address is a mail that arrives; this only keeps out what could never be one or
/// could be mistaken for another.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

/// RFC 5322 `atext` besides letters and digits: what an unquoted local part holds.
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

impl Email {
    /// Longest address SMTP can carry (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;
    /// Longest local part (RFC 5321).
    const MAX_LOCAL_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let trimmed = raw.trim();
        // Normalising can only grow text so much; longer input is refused unread.
        if trimmed.is_empty() || trimmed.len() > 4 * Self::MAX_LEN {
            return Err(ValueError::InvalidEmail);
        }
        let (local, domain) = trimmed.split_once('@').ok_or(ValueError::InvalidEmail)?;
        let local = canonical_local_part(local)?;
        let domain = canonical_domain(domain)?;
        let canonical = format!("{local}@{domain}");
        if canonical.len() > Self::MAX_LEN {
            return Err(ValueError::InvalidEmail);
        }
        Ok(Self(canonical))
    }

    /// An address this system stored after parsing it (a sealed field, a claim):
    /// trusted as it is, so that one accepted under older, laxer rules still names
    /// its account.
    pub fn from_stored(canonical: String) -> Self {
        Self(canonical)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn canonical_local_part(raw: &str) -> Result<String, ValueError> {
    let local: String = if raw.is_ascii() {
        raw.to_ascii_lowercase()
    } else {
        raw.nfkc()
            .collect::<String>()
            .to_lowercase()
            .nfc()
            .collect()
    };
    if local.is_empty()
        || local.len() > Email::MAX_LOCAL_LEN
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err(ValueError::InvalidEmail);
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || c == '.'
            || ATEXT_SPECIALS.contains(c)
            || (!c.is_ascii() && c.identifier_allowed())
    };
    if !local.chars().all(allowed) || (!local.is_ascii() && could_pass_for_another(&local)) {
        return Err(ValueError::InvalidEmail);
    }
    Ok(local)
}

fn canonical_domain(raw: &str) -> Result<String, ValueError> {
    let ascii = idna::domain_to_ascii_strict(raw).map_err(|_| ValueError::InvalidEmail)?;
    if ascii.is_empty() || ascii.ends_with('.') {
        return Err(ValueError::InvalidEmail);
    }
    if raw.is_ascii() {
        // As before these rules: only lower-cased (a `xn--` label stays as typed).
        return Ok(raw.to_ascii_lowercase());
    }
    let (unicode, valid) = idna::domain_to_unicode(&ascii);
    valid.map_err(|_| ValueError::InvalidEmail)?;
    if unicode
        .split('.')
        .any(|label| !label.is_ascii() && could_pass_for_another(label))
    {
        return Err(ValueError::InvalidEmail);
    }
    // A domain typed in fullwidth or other compatibility forms is its ASCII self.
    Ok(if unicode.is_ascii() { ascii } else { unicode })
}

/// Whether non-ASCII text could be read as other text: it mixes scripts beyond
/// UTS #39 "highly restrictive" (Latin with Cyrillic), or it is nothing but
/// characters confusable with ASCII (its UTS #39 skeleton is ASCII).
fn could_pass_for_another(text: &str) -> bool {
    let letters: String = text.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    !letters
        .as_str()
        .check_restriction_level(RestrictionLevel::HighlyRestrictive)
        || skeleton(text).all(|c| c.is_ascii())
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

/// A human-facing name; bounded so it cannot be used to bloat events or logs, and
/// free of what could make it show as something else: control and format
/// characters (bidi overrides such as U+202E, zero-width spaces), line and
/// paragraph separators. Zero-width (non-)joiners are kept between two visible
/// characters, where scripts and emoji need them. At least one character must be
/// visible (a letter, number, punctuation or symbol, not a filler). Stored NFC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let name: String = raw.trim().nfc().collect();
        let chars: Vec<char> = name.chars().collect();
        if chars.is_empty() || chars.len() > Self::MAX_CHARS {
            return Err(ValueError::InvalidDisplayName);
        }
        for (i, &c) in chars.iter().enumerate() {
            let refused = match c.general_category() {
                GeneralCategory::Format => {
                    let joins_visible = matches!(c, '\u{200C}' | '\u{200D}')
                        && i > 0
                        && chars.get(i + 1).is_some_and(|&next| is_visible(next))
                        && is_visible(chars[i - 1]);
                    !joins_visible
                }
                GeneralCategory::Control
                | GeneralCategory::Surrogate
                | GeneralCategory::PrivateUse
                | GeneralCategory::Unassigned
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator => true,
                _ => false,
            };
            if refused {
                return Err(ValueError::InvalidDisplayName);
            }
        }
        if !chars.iter().any(|&c| is_visible(c)) {
            return Err(ValueError::InvalidDisplayName);
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A character that shows: a letter, number, punctuation or symbol, but not one of
/// the letters and symbols that render blank (Hangul fillers, the blank braille
/// pattern).
fn is_visible(c: char) -> bool {
    !matches!(
        c,
        '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}'
    ) && matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Letter
            | GeneralCategoryGroup::Number
            | GeneralCategoryGroup::Punctuation
            | GeneralCategoryGroup::Symbol
    )
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
    /// The account reached its cap of live sessions
    /// (`KEYLEDGER_MAX_SESSIONS_PER_USER`) and this was its oldest.
    SessionLimit,
    /// The password was reset through a mailed link: whoever knew the old one
    /// is out.
    PasswordReset,
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
    fn plain_ascii_addresses_keep_their_canonical_form() {
        for (raw, canonical) in [
            (" Alice@Example.COM ", "alice@example.com"),
            ("a.b+tag@sub.example.org", "a.b+tag@sub.example.org"),
            ("O'Brien@Example.ie", "o'brien@example.ie"),
            ("x@localhost", "x@localhost"),
            ("x@XN--BCHER-KVA.de", "x@xn--bcher-kva.de"),
        ] {
            assert_eq!(Email::parse(raw).unwrap().as_str(), canonical, "{raw:?}");
        }
    }

    #[test]
    fn markup_and_other_non_addresses_are_refused() {
        for raw in [
            "<script>alert(1)</script>@x",
            "<b>@example.com",
            "\"quoted local\"@example.com",
            "a,b@example.com",
            "a;b@example.com",
            ".alice@example.com",
            "alice.@example.com",
            "al..ice@example.com",
            "alice@exa_mple.com",
            "alice@-example.com",
            "alice@[127.0.0.1]",
            "alice@exam ple.com",
            "alice\u{202E}@example.com",
            "ali\u{200B}ce@example.com",
        ] {
            assert_eq!(Email::parse(raw), Err(ValueError::InvalidEmail), "{raw:?}");
        }
    }

    #[test]
    fn international_addresses_are_nfc_with_their_domain_through_idna() {
        // Composed and decomposed spellings are one address.
        let composed = Email::parse("José@Bücher.de").unwrap();
        let decomposed = Email::parse("Jose\u{301}@Bu\u{308}cher.DE").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(composed.as_str(), "josé@bücher.de");
        assert_eq!(
            Email::parse("иван@пример.рф").unwrap().as_str(),
            "иван@пример.рф"
        );
        assert_eq!(
            Email::parse("用户@例子.广告").unwrap().as_str(),
            "用户@例子.广告"
        );
    }

    #[test]
    fn fullwidth_spellings_are_the_ascii_address() {
        let ascii = Email::parse("alice@example.com").unwrap();
        assert_eq!(Email::parse("ａｌｉｃｅ@example.com").unwrap(), ascii);
        assert_eq!(Email::parse("alice@ｅｘａｍｐｌｅ．ｃｏｍ").unwrap(), ascii);
        assert_eq!(
            Email::parse("ＡＬＩＣＥ＠example.com"),
            Err(ValueError::InvalidEmail)
        );
    }

    #[test]
    fn look_alikes_of_other_addresses_are_refused() {
        for raw in [
            // Cyrillic а among Latin letters.
            "\u{430}lice@example.com",
            // All Cyrillic, but every letter confusable with a Latin one: "aice".
            "\u{430}\u{456}\u{441}\u{435}@example.com",
            // A Cyrillic е and х in the domain.
            "alice@\u{435}\u{445}ample.com",
            // Greek omicron for o.
            "b\u{3BF}b@example.com",
            // A dotless i.
            "al\u{131}ce@example.com",
        ] {
            assert_eq!(Email::parse(raw), Err(ValueError::InvalidEmail), "{raw:?}");
        }
    }

    #[test]
    fn a_stored_address_is_taken_as_it_was_stored() {
        let legacy = Email::from_stored("odd_one@exa_mple.com".into());
        assert_eq!(legacy.as_str(), "odd_one@exa_mple.com");
    }

    #[test]
    fn display_names_refuse_what_could_make_them_show_as_something_else() {
        for raw in [
            "Alice\u{202E}gnp.exe",
            "\u{2066}Bob\u{2069}",
            "\u{200B}\u{200B}",
            "\u{200D}",
            "\u{FEFF}Eve",
            "Line\u{2028}Break",
            "\u{3164}",
            "\u{301}",
            "Private\u{E000}",
        ] {
            assert_eq!(
                DisplayName::parse(raw),
                Err(ValueError::InvalidDisplayName),
                "{raw:?}"
            );
        }
        // Joiners between visible characters are writing, not tricks.
        assert!(DisplayName::parse("\u{1F469}\u{200D}\u{1F4BB} Dev").is_ok());
        assert!(
            DisplayName::parse("\u{645}\u{6CC}\u{200C}\u{62E}\u{648}\u{627}\u{647}\u{645}").is_ok()
        );
        assert_eq!(
            DisplayName::parse("Zoe\u{308}").unwrap().as_str(),
            "Zo\u{EB}",
            "stored NFC"
        );
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
