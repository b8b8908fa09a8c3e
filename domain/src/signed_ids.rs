//! Two ids and an HMAC-SHA256 over them under a server key, as one URL-safe
//! string: a token that needs nothing stored to verify, that any node holding the
//! key verifies, and that names no person. Device tokens and the tokens of mailed
//! links are this, each under a label of its own so that a token made for one use
//! never verifies for another. Verification is constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// Signs and opens tokens of one kind: `prefix` starts them (a version, so that
/// a later format can be told apart), `label` keeps the kinds' MACs apart.
pub(crate) struct IdPairSigner {
    key: [u8; 32],
    prefix: &'static str,
    label: &'static [u8],
}

impl IdPairSigner {
    pub(crate) const fn new(key: [u8; 32], prefix: &'static str, label: &'static [u8]) -> Self {
        Self { key, prefix, label }
    }

    fn mac(&self, first: Uuid, second: Uuid) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(self.label);
        mac.update(first.as_bytes());
        mac.update(second.as_bytes());
        mac
    }

    /// The MAC of both ids alone (for a value derived from them, such as a code).
    pub(crate) fn tag(&self, first: Uuid, second: Uuid) -> [u8; 32] {
        self.mac(first, second).finalize().into_bytes().into()
    }

    /// `prefix` and the unpadded base64url of both ids and their MAC.
    pub(crate) fn issue(&self, first: Uuid, second: Uuid) -> String {
        let tag = self.mac(first, second).finalize().into_bytes();
        let mut raw = Vec::with_capacity(64);
        raw.extend_from_slice(first.as_bytes());
        raw.extend_from_slice(second.as_bytes());
        raw.extend_from_slice(&tag);
        format!("{}{}", self.prefix, URL_SAFE_NO_PAD.encode(raw))
    }

    /// The two ids of a genuine token of this kind.
    pub(crate) fn open(&self, token: &str) -> Option<(Uuid, Uuid)> {
        let encoded = token.strip_prefix(self.prefix)?;
        // 64 bytes encode to 86 characters; anything else is not a token.
        if encoded.len() != 86 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(encoded.as_bytes()).ok()?;
        let first = Uuid::from_slice(raw.get(..16)?).ok()?;
        let second = Uuid::from_slice(raw.get(16..32)?).ok()?;
        self.mac(first, second).verify_slice(raw.get(32..)?).ok()?;
        Some((first, second))
    }
}
