//! The secrets of second factors: authenticator-app secrets (RFC 6238 through
//! totp-rs) and backup codes.
//!
//! A TOTP secret is 160 random bits (RFC 4226 §4 recommends that length), shown
//! once at setup (base32 and as an `otpauth://` URI) and then kept only sealed with
//! the person's data key. Codes are SHA-1, 30 seconds, 6 digits (what every
//! authenticator app understands), with one step of clock drift either way.
//!
//! A backup code is 50 random bits written as ten base32 letters and digits
//! (`abcde-fghij`); only its keyed digest (HMAC-SHA256 under a server key) is
//! stored, so a copy of the log cannot be searched for codes offline.

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use keyledger_domain::second_factor::BACKUP_CODE_COUNT;

/// Seconds per TOTP time step.
pub const TOTP_STEP_SECS: u64 = 30;
/// Digits of a TOTP code.
pub const TOTP_DIGITS: u8 = 6;
/// Steps of clock drift accepted either way.
const TOTP_SKEW: u16 = 1;
const TOTP_SECRET_BYTES: usize = 20;

const BASE32_LOWER: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const BACKUP_CODE_CHARS: usize = 10;

/// An authenticator app's shared secret. Never logged.
#[derive(Clone)]
pub struct TotpSecret(Vec<u8>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; TOTP_SECRET_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Self(bytes)
    }

    /// The secret as stored (base32, unpadded); `None` when it is not one.
    pub fn from_base32(encoded: &str) -> Option<Self> {
        let secret = totp_rs::Secret::try_from_base32(encoded).ok()?;
        Some(Self(secret.as_bytes().to_vec()))
    }

    /// Base32 without padding, as authenticator apps take it typed in.
    pub fn to_base32(&self) -> String {
        totp_rs::Secret::from(self.0.clone()).to_base32()
    }

    fn totp(&self, issuer: &str, account: &str) -> Option<totp_rs::Totp> {
        totp_rs::Builder::new()
            .with_secret(self.0.clone())
            .with_issuer(Some(issuer.to_owned()))
            .with_account_name(account.to_owned())
            .with_digits(TOTP_DIGITS)
            .with_step_duration(TOTP_STEP_SECS)
            .with_skew(TOTP_SKEW)
            .build()
            .ok()
    }

    /// The `otpauth://totp/…` URI an authenticator app scans, naming `issuer`
    /// and the `account` label.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        // Issuer and account come from settings and a parsed address; a label
        // the URI format refuses (a colon) falls back to the issuer alone.
        self.totp(issuer, account)
            .or_else(|| self.totp(issuer, "account"))
            .and_then(|totp| totp.to_url().ok())
            .unwrap_or_default()
    }

    /// The time step `code` belongs to at `unix_secs` (within the drift), if it
    /// is a code of this secret. totp-rs compares in constant time.
    pub fn matching_step(&self, code: &str, unix_secs: u64) -> Option<u64> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != usize::from(TOTP_DIGITS) || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.totp("keyledger", "account")?.check(&code, unix_secs)
    }
}

/// The server key under which backup codes are digested.
#[derive(Clone)]
pub struct BackupCodeKey([u8; 32]);

impl std::fmt::Debug for BackupCodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupCodeKey(<redacted>)")
    }
}

impl BackupCodeKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// The stored form of `code` (normalised first): hex HMAC-SHA256.
    pub fn digest(&self, code: &str) -> String {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(normalise_backup_code(code).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The index of the unused code among `digests` that `code` is, comparing
    /// every digest in constant time.
    pub fn find(&self, digests: &[String], used: &[bool], code: &str) -> Option<u32> {
        let normalised = normalise_backup_code(code);
        if normalised.len() != BACKUP_CODE_CHARS {
            return None;
        }
        let presented = self.digest(&normalised);
        let mut found = None;
        for (index, digest) in digests.iter().enumerate() {
            let matches: bool = presented.as_bytes().ct_eq(digest.as_bytes()).into();
            if matches && !used.get(index).copied().unwrap_or(true) {
                found = u32::try_from(index).ok();
            }
        }
        found
    }

    /// [`BACKUP_CODE_COUNT`] new codes, and their digests in the same order.
    pub fn generate(&self) -> (Vec<String>, Vec<String>) {
        let codes: Vec<String> = (0..BACKUP_CODE_COUNT).map(|_| backup_code()).collect();
        let digests = codes.iter().map(|code| self.digest(code)).collect();
        (codes, digests)
    }
}

/// What a person may type for a code: dashes and spaces dropped, lower case.
fn normalise_backup_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn backup_code() -> String {
    let mut bytes = [0u8; BACKUP_CODE_CHARS];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let chars: String = bytes
        .iter()
        .map(|b| BASE32_LOWER[usize::from(b & 31)] as char)
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1: the secret is the ASCII of "12345678901234567890"
    /// and the codes are the last six digits of the eight-digit ones listed.
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let secret = TotpSecret(b"12345678901234567890".to_vec());
        for (time, code) in [
            (59, "287082"),
            (1111111109, "081804"),
            (1111111111, "050471"),
            (1234567890, "005924"),
            (2000000000, "279037"),
        ] {
            assert_eq!(
                secret.matching_step(code, time),
                Some(time / TOTP_STEP_SECS),
                "{time}"
            );
        }
    }

    #[test]
    fn one_step_of_drift_is_accepted_and_no_more() {
        let secret = TotpSecret(b"12345678901234567890".to_vec());
        // The code of step 37037036 (t = 1111111109).
        assert_eq!(
            secret.matching_step("081804", 1111111109 + 30),
            Some(37037036)
        );
        assert_eq!(secret.matching_step("081804", 1111111109 + 61), None);
        assert_eq!(secret.matching_step("08180", 1111111109), None);
        assert_eq!(secret.matching_step("o81804", 1111111109), None);
    }

    #[test]
    fn a_secret_round_trips_through_base32_and_names_issuer_and_account() {
        let secret = TotpSecret::generate();
        let encoded = secret.to_base32();
        assert_eq!(TotpSecret::from_base32(&encoded).unwrap().0, secret.0);
        let uri = secret.otpauth_uri("Keyledger", "ada@example.com");
        assert!(
            uri.starts_with("otpauth://totp/Keyledger:ada%40example.com?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={encoded}")), "{uri}");
        assert!(uri.contains("issuer=Keyledger"), "{uri}");
    }

    #[test]
    fn a_backup_code_is_found_once_typed_any_way() {
        let key = BackupCodeKey::new([9; 32]);
        let (codes, digests) = key.generate();
        assert_eq!(codes.len(), BACKUP_CODE_COUNT);
        let mut used = vec![false; digests.len()];
        let typed = codes[3].to_uppercase().replace('-', " ");
        assert_eq!(key.find(&digests, &used, &typed), Some(3));
        used[3] = true;
        assert_eq!(key.find(&digests, &used, &codes[3]), None);
        assert_eq!(key.find(&digests, &used, "aaaaa-aaaaa"), None);
        assert_eq!(
            BackupCodeKey::new([8; 32]).find(&digests, &[false; 10], &codes[0]),
            None
        );
    }
}
