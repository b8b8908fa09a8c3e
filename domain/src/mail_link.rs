//! The tokens of mailed links (verify an address, reset a password, unlock an
//! account, sign in), and the short codes of sign-in mails.
//!
//! A token is `klm1.` and the unpadded base64url of the account id, the request id
//! (random, recorded in the request's event) and an HMAC-SHA256 over both under a
//! server key and the link's purpose. Nothing secret is stored: the event holds
//! only the request id, which is worthless without the key, so a mail can be sent
//! again after a restart and no log, event or NATS message ever holds a working
//! link. Whether a genuine token still works (newest request, unused, unexpired)
//! is the account aggregate's decision.

use uuid::Uuid;

use crate::signed_ids::IdPairSigner;

const PREFIX: &str = "klm1.";

/// What a mailed link is for; a token made for one purpose opens no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkPurpose {
    VerifyEmail,
    ResetPassword,
    /// Confirm a new address (mailed to that address).
    ChangeEmail,
    /// Lift the lockout the mail was sent for (`AccountLocked`'s unlock request).
    Unlock,
    /// Sign in (`EmailLoginRequested`'s request).
    EmailLogin,
    /// A second factor's code (`SecondFactorCodeSent`'s request). Its mail
    /// carries the code only, never a link.
    SecondFactorCode,
}

impl LinkPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::VerifyEmail => b"keyledger mail link v1\0verify email\0",
            Self::ResetPassword => b"keyledger mail link v1\0reset password\0",
            Self::ChangeEmail => b"keyledger mail link v1\0change email\0",
            Self::Unlock => b"keyledger mail link v1\0unlock\0",
            Self::EmailLogin => b"keyledger mail link v1\0email login\0",
            Self::SecondFactorCode => b"keyledger mail link v1\0second factor\0",
        }
    }
}

/// Digits in a sign-in code.
pub const CODE_DIGITS: usize = 6;

const CODE_LABEL: &[u8] = b"keyledger mail code v1\0email login\0";
const SECOND_FACTOR_CODE_LABEL: &[u8] = b"keyledger mail code v1\0second factor\0";

/// A genuine link's account and request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailLink {
    pub user_id: Uuid,
    pub request_id: Uuid,
}

/// The server key that signs mailed links.
#[derive(Clone)]
pub struct MailLinkKey([u8; 32]);

impl MailLinkKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn signer(&self, purpose: LinkPurpose) -> IdPairSigner {
        IdPairSigner::new(self.0, PREFIX, purpose.label())
    }

    /// The token of `request_id` on `user_id`, for a link of `purpose`.
    pub fn token(&self, purpose: LinkPurpose, link: MailLink) -> String {
        self.signer(purpose).issue(link.user_id, link.request_id)
    }

    /// The account and request a genuine token of `purpose` names.
    pub fn open(&self, purpose: LinkPurpose, token: &str) -> Option<MailLink> {
        let (user_id, request_id) = self.signer(purpose).open(token)?;
        Some(MailLink {
            user_id,
            request_id,
        })
    }

    /// The short code of a sign-in mail, for typing on another device than the
    /// one that reads the mail: [`CODE_DIGITS`] decimal digits taken from a MAC
    /// over the account and request under a label of its own (so the code
    /// reveals nothing about the link's token). Guessable by design, so the
    /// account aggregate allows only a few wrong ones (`RejectEmailLoginCode`).
    pub fn code(&self, link: MailLink) -> String {
        self.code_under(CODE_LABEL, link)
    }

    /// The code a second factor's email or text message carries
    /// (`SecondFactorCodeSent`'s request): like [`Self::code`], under a label of
    /// its own, so a sign-in mail's code never passes as one.
    pub fn second_factor_code(&self, link: MailLink) -> String {
        self.code_under(SECOND_FACTOR_CODE_LABEL, link)
    }

    /// Whether `given` is [`Self::second_factor_code`] of `link` (constant time).
    pub fn second_factor_code_matches(&self, link: MailLink, given: &str) -> bool {
        codes_match(&self.second_factor_code(link), given)
    }

    fn code_under(&self, label: &'static [u8], link: MailLink) -> String {
        let tag = IdPairSigner::new(self.0, "", label).tag(link.user_id, link.request_id);
        let mut head = [0u8; 8];
        head.copy_from_slice(&tag[..8]);
        // 2^64 is about 1.8e13 times 10^6: the modulo's bias is negligible.
        let number = u64::from_be_bytes(head) % 10u64.pow(CODE_DIGITS as u32);
        format!("{number:0width$}", width = CODE_DIGITS)
    }

    /// Whether `given` is the code of `link`, compared in constant time.
    /// Spaces and dashes a person may type between digits are ignored.
    pub fn code_matches(&self, link: MailLink, given: &str) -> bool {
        codes_match(&self.code(link), given)
    }
}

/// Whether a typed code is `expected`, compared in constant time; spaces and
/// dashes a person may type between digits are ignored.
fn codes_match(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let typed: String = given
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    typed.len() == expected.len() && bool::from(typed.as_bytes().ct_eq(expected.as_bytes()))
}

impl std::fmt::Debug for MailLinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MailLinkKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> MailLink {
        MailLink {
            user_id: Uuid::from_u128(1),
            request_id: Uuid::from_u128(2),
        }
    }

    #[test]
    fn a_token_opens_for_its_purpose_under_its_key_only() {
        let key = MailLinkKey::new([7; 32]);
        let token = key.token(LinkPurpose::ResetPassword, link());
        assert_eq!(key.open(LinkPurpose::ResetPassword, &token), Some(link()));
        assert_eq!(key.open(LinkPurpose::VerifyEmail, &token), None);
        assert_eq!(key.open(LinkPurpose::ChangeEmail, &token), None);
        let change = key.token(LinkPurpose::ChangeEmail, link());
        assert_eq!(key.open(LinkPurpose::ChangeEmail, &change), Some(link()));
        assert_eq!(key.open(LinkPurpose::VerifyEmail, &change), None);
        assert_eq!(key.open(LinkPurpose::Unlock, &token), None);
        let unlock = key.token(LinkPurpose::Unlock, link());
        assert_eq!(key.open(LinkPurpose::Unlock, &unlock), Some(link()));
        assert_eq!(key.open(LinkPurpose::ResetPassword, &unlock), None);
        assert_eq!(
            MailLinkKey::new([8; 32]).open(LinkPurpose::ResetPassword, &token),
            None
        );
    }

    #[test]
    fn an_altered_truncated_or_foreign_token_does_not_open() {
        let key = MailLinkKey::new([7; 32]);
        let token = key.token(LinkPurpose::VerifyEmail, link());
        let mut altered = token.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        let device = crate::device_token::DeviceTokenKey::new([7; 32])
            .issue(link().user_id, link().request_id);
        for bad in [
            altered.as_str(),
            &token[..token.len() - 1],
            "klm1.",
            "",
            &device,
            &format!("{token}A"),
        ] {
            assert_eq!(key.open(LinkPurpose::VerifyEmail, bad), None, "{bad}");
        }
    }

    #[test]
    fn a_code_is_six_digits_of_its_request_under_its_key_only() {
        let key = MailLinkKey::new([7; 32]);
        let code = key.code(link());
        assert_eq!(code.len(), CODE_DIGITS);
        assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        assert_eq!(key.code(link()), code, "the same request, the same code");
        assert!(key.code_matches(link(), &code));
        assert!(key.code_matches(link(), &format!("{} {}", &code[..3], &code[3..])));
        let other_request = MailLink {
            request_id: Uuid::from_u128(3),
            ..link()
        };
        assert_ne!(key.code(other_request), code);
        assert_ne!(MailLinkKey::new([8; 32]).code(link()), code);
        for wrong in ["", "12345", "1234567", &format!("{code}0")] {
            assert!(!key.code_matches(link(), wrong), "{wrong}");
        }
        // Not a piece of the link's token.
        let token = key.token(LinkPurpose::EmailLogin, link());
        assert_eq!(key.open(LinkPurpose::EmailLogin, &token), Some(link()));
        assert_eq!(key.open(LinkPurpose::VerifyEmail, &token), None);
    }

    #[test]
    fn the_debug_form_shows_no_key() {
        assert_eq!(
            format!("{:?}", MailLinkKey::new([7; 32])),
            "MailLinkKey(<redacted>)"
        );
    }
}
