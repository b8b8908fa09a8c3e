//! Device tokens: proof that a client logged in to an account before (OWASP's
//! "device cookies"). A client presenting one for the account it logs in to is not
//! locked out by failures from elsewhere, so guessing cannot lock the owner out.
//!
//! A token is `kld1.` and the unpadded base64url of account id, device id and an
//! HMAC-SHA256 over both under a server key: nothing is stored, any node holding
//! the key verifies it, and it names no person. Verification is constant-time.

use uuid::Uuid;

use crate::signed_ids::IdPairSigner;

const PREFIX: &str = "kld1.";
const LABEL: &[u8] = b"keyledger device token v1\0";

/// The server key that signs device tokens.
pub struct DeviceTokenKey(IdPairSigner);

impl DeviceTokenKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(IdPairSigner::new(key, PREFIX, LABEL))
    }

    /// The token for `device_id` (chosen at random by the caller) on `user_id`.
    pub fn issue(&self, user_id: Uuid, device_id: Uuid) -> String {
        self.0.issue(user_id, device_id)
    }

    /// The device a token names, if it is genuine and was issued for `user_id`.
    pub fn verify(&self, token: &str, user_id: Uuid) -> Option<Uuid> {
        let (owner, device_id) = self.0.open(token)?;
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
