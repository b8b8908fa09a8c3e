//! Device tokens: proof that a client logged in to an account before (OWASP's
//! "device cookies"). A client presenting one for the account it logs in to is not
//! locked out by failures from elsewhere, so guessing cannot lock the owner out.
//!
//! A token is `kld1.` and the unpadded base64url of account id, device id and an
//! HMAC-SHA256 over both under a server key: nothing is stored, any node holding
//! the key verifies it, and it names no person. Verification is constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

const PREFIX: &str = "kld1.";
const LABEL: &[u8] = b"keyledger device token v1\0";

/// The server key that signs device tokens.
pub struct DeviceTokenKey([u8; 32]);

impl DeviceTokenKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn mac(&self, user_id: Uuid, device_id: Uuid) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(LABEL);
        mac.update(user_id.as_bytes());
        mac.update(device_id.as_bytes());
        mac
    }

    /// The token for `device_id` (chosen at random by the caller) on `user_id`.
    pub fn issue(&self, user_id: Uuid, device_id: Uuid) -> String {
        let tag = self.mac(user_id, device_id).finalize().into_bytes();
        let mut raw = Vec::with_capacity(64);
        raw.extend_from_slice(user_id.as_bytes());
        raw.extend_from_slice(device_id.as_bytes());
        raw.extend_from_slice(&tag);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// The device a token names, if it is genuine and was issued for `user_id`.
    pub fn verify(&self, token: &str, user_id: Uuid) -> Option<Uuid> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.strip_prefix(PREFIX)?.as_bytes())
            .ok()?;
        if raw.len() != 64 {
            return None;
        }
        let owner = Uuid::from_slice(&raw[..16]).ok()?;
        let device_id = Uuid::from_slice(&raw[16..32]).ok()?;
        self.mac(owner, device_id).verify_slice(&raw[32..]).ok()?;
        (owner == user_id).then_some(device_id)
    }
}

impl std::fmt::Debug for DeviceTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceTokenKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_for_its_account_only_and_not_once_altered() {
        let key = DeviceTokenKey::new([7; 32]);
        let (user, other, device) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let token = key.issue(user, device);
        assert_eq!(key.verify(&token, user), Some(device));
        assert_eq!(key.verify(&token, other), None);
        assert_eq!(DeviceTokenKey::new([8; 32]).verify(&token, user), None);
        let mut altered = token.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(key.verify(&String::from_utf8(altered).unwrap(), user), None);
        assert_eq!(key.verify("kld1.", user), None);
        assert_eq!(key.verify("", user), None);
    }
}
