//! Personal data inside events, sealed so that it can be forgotten.
//!
//! The event log is append-only and hash-chained, so an erased account's email
//! cannot be deleted from it. Instead every personal field is encrypted
//! (XChaCha20-Poly1305) with a data key of the person it is about, kept outside the
//! log; erasing the person deletes the key, and from then on the ciphertext in the
//! log is noise to every reader while the events and their hashes stay as written
//! ("crypto-shredding", decision 0009).
//!
//! A sealed field is the string `sealed:v1:<owner uuid>:<base64url(nonce ‖ ciphertext)>`.
//! It names the owner of its key so that any reader can open any event without
//! knowing which fields are whose, and it binds owner and field name as associated
//! data so a ciphertext moved to another field or account does not open. Events
//! written before sealing existed (version 1.0 of `UserRegistered` and
//! `SessionStarted`) hold clear text, which passes through [`PersonalData::open`]
//! unchanged until `keyledger-replay reseal` rewrites such a log.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::values::{Email, PasswordHash};

/// What every reader shows in place of a field whose key was erased.
pub const ERASED: &str = "[erased]";

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 24;

/// Which personal field a value is: part of the associated data, so a ciphertext
/// only opens as the field it was sealed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Email,
    DisplayName,
    Ip,
    UserAgent,
    /// A password hash (sealed so that erasure makes it unusable for offline
    /// guessing too). Never shown: [`Field::from_name`] does not name it, so
    /// readers that open whole payloads show `[erased]` in its place.
    PasswordHash,
    /// The shared secret of an authenticator app (TOTP seed, base32). A secret
    /// like the password hash: never shown, so [`Field::from_name`] does not
    /// name it either.
    TotpSecret,
    /// The phone number of a second factor that receives codes by text message.
    Phone,
    /// A passkey's credential (its id and public key): nothing secret, but it
    /// identifies its holder across sites that see it, so it is sealed like an
    /// address. Only the write side reads it.
    PasskeyCredential,
    /// The name an owner gave a passkey.
    PasskeyName,
    /// An identity provider's id of the person (OpenID `sub`, Kakao's or
    /// Naver's user id): it follows the person across every site that uses the
    /// same provider account, so it is sealed like an address.
    ExternalSubject,
    /// A provider's access and refresh tokens, kept for a provider configured
    /// to keep them (stored beside the log, never in an event). Secrets: never
    /// shown, so [`Field::from_name`] does not name them.
    ProviderTokens,
}

impl Field {
    pub const fn name(self) -> &'static str {
        match self {
            Field::Email => "email",
            Field::DisplayName => "display_name",
            Field::Ip => "ip",
            Field::UserAgent => "user_agent",
            Field::PasswordHash => "password_hash",
            Field::TotpSecret => "totp_secret",
            Field::Phone => "phone",
            Field::PasskeyCredential => "passkey_credential",
            Field::PasskeyName => "passkey_name",
            Field::ExternalSubject => "external_subject",
            Field::ProviderTokens => "provider_tokens",
        }
    }

    /// The field a JSON key holds, for readers that open whole payloads. A
    /// password hash is deliberately absent: it is a secret, not something any
    /// reader shows, so only the write side opens it ([`SealedPasswordHash`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            // The addresses of an address change are sealed as addresses.
            "email" | "new_email" | "previous_email" | "external_email" => Field::Email,
            "display_name" => Field::DisplayName,
            "ip" => Field::Ip,
            "user_agent" => Field::UserAgent,
            "phone" => Field::Phone,
            "passkey_name" => Field::PasskeyName,
            "external_subject" => Field::ExternalSubject,
            _ => return None,
        })
    }
}

/// A stored data key of the wrong length (says only its length, never its bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stored data key is {len} bytes long, not 32: the key store is corrupt")]
pub struct CorruptDataKey {
    pub len: usize,
}

/// A person's 256-bit data key. Never serialised, never logged.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key from the operating system.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Self(bytes)
    }

    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key as a store returned it. Anything but 32 bytes is corruption, and an
    /// error: read as "erased", it would silently open every field of the person
    /// as erased and leave their personal fields out of new events.
    pub fn from_stored(bytes: Vec<u8>) -> Result<Self, CorruptDataKey> {
        let len = bytes.len();
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| CorruptDataKey { len })?;
        Ok(Self(bytes))
    }

    /// Seals `clear` as `field` of `owner`, with a fresh random nonce (192 bits:
    /// random nonces never realistically repeat).
    pub fn seal(&self, owner: Uuid, field: Field, clear: &str) -> PersonalData {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        self.seal_with_nonce(owner, field, clear, nonce)
    }

    fn seal_with_nonce(
        &self,
        owner: Uuid,
        field: Field,
        clear: &str,
        nonce: [u8; NONCE_LEN],
    ) -> PersonalData {
        let aad = associated_data(owner, field);
        let ciphertext = XChaCha20Poly1305::new(&self.0.into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: clear.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory input");
        let mut body = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&ciphertext);
        PersonalData(format!("{PREFIX}{owner}:{}", URL_SAFE_NO_PAD.encode(body)))
    }

    /// Opens a sealed value of `owner`; `None` when it does not open with this key
    /// (another key, another field, or altered).
    fn open(&self, sealed: &SealedParts<'_>, field: Field) -> Option<String> {
        let body = URL_SAFE_NO_PAD.decode(sealed.body).ok()?;
        if body.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let aad = associated_data(sealed.owner, field);
        let clear = XChaCha20Poly1305::new(&self.0.into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .ok()?;
        String::from_utf8(clear).ok()
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

fn associated_data(owner: Uuid, field: Field) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + 1 + field.name().len());
    aad.extend_from_slice(owner.as_bytes());
    aad.push(b':');
    aad.extend_from_slice(field.name().as_bytes());
    aad
}

struct SealedParts<'a> {
    owner: Uuid,
    body: &'a str,
}

/// A personal field as events carry it: sealed (from version 2.0 of the events
/// that hold one), clear text (events written before), or, once a reader opened it,
/// the clear value or [`ERASED`]. The domain never needs the clear value to decide
/// anything, so aggregates hold it as it is.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PersonalData(String);

impl PersonalData {
    /// A value that is not sealed: clear text in old events, or what a reader made
    /// of a sealed one.
    pub fn clear(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// A value as a store kept it ([`Self::as_str`]), sealed or not.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The stored form (ciphertext when sealed).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_sealed(&self) -> bool {
        self.parts().is_some()
    }

    /// Whose key seals it, when sealed.
    pub fn owner(&self) -> Option<Uuid> {
        self.parts().map(|p| p.owner)
    }

    fn parts(&self) -> Option<SealedParts<'_>> {
        parse_sealed(&self.0)
    }

    /// The clear value: opened with `key` (the owner's, `None` once erased),
    /// unchanged when not sealed, [`ERASED`] when it cannot be opened.
    pub fn open(&self, field: Field, key: Option<&DataKey>) -> String {
        match self.parts() {
            None => self.0.clone(),
            Some(parts) => key
                .and_then(|k| k.open(&parts, field))
                .unwrap_or_else(|| ERASED.to_owned()),
        }
    }
}

/// The owner named by a sealed string, for readers that walk JSON.
pub fn sealed_owner(value: &str) -> Option<Uuid> {
    parse_sealed(value).map(|p| p.owner)
}

fn parse_sealed(value: &str) -> Option<SealedParts<'_>> {
    let rest = value.strip_prefix(PREFIX)?;
    let (owner, body) = rest.split_once(':')?;
    Some(SealedParts {
        owner: owner.parse().ok()?,
        body,
    })
}

impl fmt::Debug for PersonalData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_sealed() {
            f.write_str("PersonalData(<sealed>)")
        } else {
            f.write_str("PersonalData(<clear>)")
        }
    }
}

impl From<String> for PersonalData {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for PersonalData {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// A password hash as events and the User aggregate carry it: sealed with the
/// person's data key (`UserRegistered` 3.0, `PasswordChanged` and
/// `PasswordRehashed` 2.0), or the clear PHC string of events written before.
///
/// Why sealed: a hash is enough for an offline guessing attack, and the log keeps
/// every event forever. Sealed, it dies with the data key at erasure like the
/// email. Only the write side opens it (to verify a password); no reader shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedPasswordHash(PersonalData);

impl SealedPasswordHash {
    /// `hash` sealed for `owner` with `key`.
    pub fn seal(key: &DataKey, owner: Uuid, hash: &PasswordHash) -> Self {
        Self(key.seal(owner, Field::PasswordHash, hash.expose_phc()))
    }

    /// A hash as events written before sealing hold it (and test fixtures).
    pub fn clear(hash: PasswordHash) -> Self {
        Self(PersonalData::clear(hash.expose_phc()))
    }

    pub fn is_sealed(&self) -> bool {
        self.0.is_sealed()
    }

    /// Whose key seals it, when sealed.
    pub fn owner(&self) -> Option<Uuid> {
        self.0.owner()
    }

    /// The stored form (ciphertext when sealed): what lands in the log.
    pub fn as_stored(&self) -> &str {
        self.0.as_str()
    }

    /// The hash: opened with `key` (the owner's), as stored when it is clear;
    /// `None` when it does not open (the key is gone: the account was erased).
    pub fn open(&self, key: Option<&DataKey>) -> Option<PasswordHash> {
        match self.0.parts() {
            None => Some(PasswordHash::new(self.0.as_str().to_owned())),
            Some(parts) => key
                .and_then(|k| k.open(&parts, Field::PasswordHash))
                .map(PasswordHash::new),
        }
    }
}

impl fmt::Debug for SealedPasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_sealed() {
            f.write_str("SealedPasswordHash(<sealed>)")
        } else {
            f.write_str("SealedPasswordHash(<clear, redacted>)")
        }
    }
}

/// The key-encryption key that wraps every data key at rest.
///
/// Why: a data key stored in clear beside the ciphertexts it opens protects
/// nothing against whoever copies the database (a dump, a backup, a stolen disk).
/// Wrapped with a key kept outside the database (configuration, like the email
/// index key), a copy of the database alone opens no personal data. Each wrapped
/// key names the wrapping key it was made with (a fingerprint, never the key), so
/// a new wrapping key can be introduced while the old one still unwraps.
#[derive(Clone)]
pub struct DataKeyWrappingKey {
    bytes: [u8; 32],
    id: [u8; WRAPPING_KEY_ID_LEN],
}

const WRAPPING_KEY_ID_LEN: usize = 8;
const WRAPPED_FORMAT: u8 = 1;
const AEAD_TAG_LEN: usize = 16;
/// The stored length of a wrapped data key: format byte, wrapping key id, nonce,
/// and the sealed 32-byte key with its tag. A stored key of 32 bytes is one
/// written before wrapping existed (read as it is, rewrapped at the next start).
pub const WRAPPED_DATA_KEY_LEN: usize = 1 + WRAPPING_KEY_ID_LEN + NONCE_LEN + 32 + AEAD_TAG_LEN;

/// Why a data key wrapping key was refused (never quotes the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a data key wrapping key must be 32 bytes in unpadded base64url (43 characters); \
     several are separated by commas or whitespace, the first one wrapping"
)]
pub struct BadDataKeyWrappingKey;

/// Why a stored data key cannot be used (never quotes key bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnreadableDataKey {
    #[error("a stored data key is {len} bytes long, neither 32 (unwrapped) nor {WRAPPED_DATA_KEY_LEN} (wrapped): the key store is corrupt")]
    Length { len: usize },
    #[error(
        "a data key is wrapped with a key that is not configured (key id {id}): \
         list it in KEYLEDGER_DATA_KEY_WRAPPING_KEY (or its file) after the current one"
    )]
    UnknownWrappingKey { id: String },
    #[error("a wrapped data key does not open: it was altered or moved to another person")]
    Altered,
}

impl DataKeyWrappingKey {
    pub fn generate() -> Self {
        Self::from_bytes(DataKey::generate().0)
    }

    fn from_bytes(bytes: [u8; 32]) -> Self {
        use sha2::Digest as _;
        let digest = Sha256::new()
            .chain_update(b"keyledger data key wrapping key id\0")
            .chain_update(bytes)
            .finalize();
        let mut id = [0u8; WRAPPING_KEY_ID_LEN];
        id.copy_from_slice(&digest[..WRAPPING_KEY_ID_LEN]);
        Self { bytes, id }
    }

    /// Reads the configured form: 32 bytes, unpadded base64url.
    pub fn parse(encoded: &str) -> Result<Self, BadDataKeyWrappingKey> {
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded.trim())
            .map_err(|_| BadDataKeyWrappingKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| BadDataKeyWrappingKey)?;
        Ok(Self::from_bytes(bytes))
    }

    /// The configured form of this key (for writing a new key file).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes)
    }

    /// The fingerprint stored with every key it wraps (hex; not secret).
    pub fn id(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Equal when they are the same key (compared by fingerprint: not secret, and
/// 64 bits tell keys apart).
impl PartialEq for DataKeyWrappingKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for DataKeyWrappingKey {}

impl fmt::Debug for DataKeyWrappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKeyWrappingKey({}, <redacted>)", self.id())
    }
}

/// The wrapping keys a node holds: the current one wraps, retired ones (after a
/// rotation) still unwrap until every key has been rewrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataKeyWrapping {
    current: DataKeyWrappingKey,
    retired: Vec<DataKeyWrappingKey>,
}

fn wrapping_associated_data(owner: Uuid, id: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + 10 + WRAPPING_KEY_ID_LEN);
    aad.extend_from_slice(owner.as_bytes());
    aad.extend_from_slice(b":data_key:");
    aad.extend_from_slice(id);
    aad
}

impl DataKeyWrapping {
    pub fn new(current: DataKeyWrappingKey, retired: Vec<DataKeyWrappingKey>) -> Self {
        Self { current, retired }
    }

    /// The configured form: one or more keys separated by commas or whitespace
    /// (one per line in a file); the first wraps, the others only unwrap.
    pub fn parse(text: &str) -> Result<Self, BadDataKeyWrappingKey> {
        let mut keys = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|part| !part.is_empty())
            .map(DataKeyWrappingKey::parse);
        let current = keys.next().ok_or(BadDataKeyWrappingKey)??;
        let retired = keys.collect::<Result<_, _>>()?;
        Ok(Self { current, retired })
    }

    pub fn current(&self) -> &DataKeyWrappingKey {
        &self.current
    }

    /// The current wrapping key's id as stored in wrapped keys (bytes 2–9), for
    /// stores that look for keys wrapped otherwise.
    pub fn current_id_bytes(&self) -> [u8; 8] {
        self.current.id
    }

    /// `key` wrapped for `owner` with the current wrapping key: the owner id is
    /// associated data, so a wrapped key copied to another person does not open.
    pub fn wrap(&self, owner: Uuid, key: &DataKey) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let aad = wrapping_associated_data(owner, &self.current.id);
        let sealed = XChaCha20Poly1305::new(&self.current.bytes.into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: key.expose_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory input");
        let mut out = Vec::with_capacity(WRAPPED_DATA_KEY_LEN);
        out.push(WRAPPED_FORMAT);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The data key `stored` holds for `owner`: unwrapped with whichever
    /// configured key wrapped it, or as it is when it predates wrapping (32 bytes).
    pub fn unwrap(&self, owner: Uuid, stored: &[u8]) -> Result<DataKey, UnreadableDataKey> {
        if stored.len() == 32 {
            let mut bytes = [0u8; 32];
            bytes.copy_from_slice(stored);
            return Ok(DataKey(bytes));
        }
        if stored.len() != WRAPPED_DATA_KEY_LEN || stored[0] != WRAPPED_FORMAT {
            return Err(UnreadableDataKey::Length { len: stored.len() });
        }
        let id = &stored[1..1 + WRAPPING_KEY_ID_LEN];
        let wrapping = std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|k| k.id == id)
            .ok_or_else(|| UnreadableDataKey::UnknownWrappingKey {
                id: id.iter().map(|b| format!("{b:02x}")).collect(),
            })?;
        let nonce = &stored[1 + WRAPPING_KEY_ID_LEN..1 + WRAPPING_KEY_ID_LEN + NONCE_LEN];
        let sealed = &stored[1 + WRAPPING_KEY_ID_LEN + NONCE_LEN..];
        let aad = wrapping_associated_data(owner, id);
        let clear = XChaCha20Poly1305::new(&wrapping.bytes.into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| UnreadableDataKey::Altered)?;
        let bytes: [u8; 32] = clear.try_into().map_err(|_| UnreadableDataKey::Altered)?;
        Ok(DataKey(bytes))
    }

    /// Whether `stored` is wrapped with the current key (else it predates
    /// wrapping or a rotation, and is to be rewrapped).
    pub fn is_current(&self, stored: &[u8]) -> bool {
        stored.len() == WRAPPED_DATA_KEY_LEN
            && stored[0] == WRAPPED_FORMAT
            && stored[1..1 + WRAPPING_KEY_ID_LEN] == self.current.id
    }
}

/// The secret that turns an email address into its index entry. Uniqueness and
/// login lookups need to find an account by address without the address being
/// stored in clear: the index holds `HMAC-SHA256(key, normalised address)`, which
/// nobody without this key (kept out of the database, like the signing key) can
/// reverse by guessing addresses.
#[derive(Clone)]
pub struct EmailIndexKey([u8; 32]);

/// Why an email index key was refused (never quotes the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the email index key must be 32 bytes in unpadded base64url (43 characters)")]
pub struct BadEmailIndexKey;

impl EmailIndexKey {
    pub fn generate() -> Self {
        Self(DataKey::generate().0)
    }

    /// Reads the configured form: 32 bytes, unpadded base64url.
    pub fn parse(encoded: &str) -> Result<Self, BadEmailIndexKey> {
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded.trim())
            .map_err(|_| BadEmailIndexKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| BadEmailIndexKey)?;
        Ok(Self(bytes))
    }

    /// The configured form of this key (for writing a new key file).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The index entry of an address.
    pub fn digest(&self, email: &Email) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(email.as_str().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A key for another purpose, derived from this one (HMAC with a label no
    /// address can be, as addresses hold an `@`), so that an operator manages one
    /// secret less and no other use of the key can collide with the index.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(b"keyledger derived key\0");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for EmailIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmailIndexKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stored_key_of_the_wrong_length_is_corrupt_and_says_only_its_length() {
        for len in [0, 16, 31, 33] {
            let Err(error) = DataKey::from_stored(vec![7; len]) else {
                panic!("a key of {len} bytes was accepted");
            };
            assert_eq!(error, CorruptDataKey { len });
            assert!(!error.to_string().contains('7'), "{error}");
        }
        let key = DataKey::from_stored(vec![7; 32]).unwrap();
        assert_eq!(key.expose_bytes(), &[7; 32]);
    }

    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_owner_and_field() {
        let owner = Uuid::new_v4();
        let key = DataKey::generate();
        let sealed = key.seal(owner, Field::Email, "alice@example.com");

        assert!(sealed.is_sealed());
        assert!(!sealed.as_str().contains("alice"));
        assert_eq!(sealed.owner(), Some(owner));
        assert_eq!(sealed.open(Field::Email, Some(&key)), "alice@example.com");
        // Another key, another field, no key: erased.
        assert_eq!(
            sealed.open(Field::Email, Some(&DataKey::generate())),
            ERASED
        );
        assert_eq!(sealed.open(Field::DisplayName, Some(&key)), ERASED);
        assert_eq!(sealed.open(Field::Email, None), ERASED);
    }

    #[test]
    fn a_ciphertext_moved_to_another_owner_does_not_open() {
        let (alice, mallory) = (Uuid::new_v4(), Uuid::new_v4());
        let key = DataKey::generate();
        let sealed = key.seal(alice, Field::Ip, "192.0.2.1");
        let moved = PersonalData(
            sealed
                .as_str()
                .replace(&alice.to_string(), &mallory.to_string()),
        );
        assert_eq!(moved.open(Field::Ip, Some(&key)), ERASED);
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let owner = Uuid::new_v4();
        let key = DataKey::generate();
        let a = key.seal(owner, Field::Ip, "192.0.2.1");
        let b = key.seal(owner, Field::Ip, "192.0.2.1");
        assert_ne!(a, b, "equal values must not be linkable through the log");
    }

    #[test]
    fn clear_text_from_old_events_passes_through() {
        let old = PersonalData::clear("bob@example.com");
        assert!(!old.is_sealed());
        assert_eq!(old.open(Field::Email, None), "bob@example.com");
    }

    #[test]
    fn garbage_after_the_prefix_is_erased_not_a_panic() {
        let owner = Uuid::new_v4();
        for junk in [
            format!("sealed:v1:{owner}:"),
            format!("sealed:v1:{owner}:!!!"),
            format!("sealed:v1:{owner}:AAAA"),
        ] {
            let v = PersonalData(junk);
            assert_eq!(v.open(Field::Email, Some(&DataKey::generate())), ERASED);
        }
        // Not a uuid: not sealed at all, shown as stored.
        assert!(!PersonalData::clear("sealed:v1:nope:x").is_sealed());
    }

    #[test]
    fn the_email_index_is_keyed_and_follows_normalisation() {
        let key = EmailIndexKey::generate();
        let a = key.digest(&Email::parse("Alice@Example.com").unwrap());
        let b = key.digest(&Email::parse(" alice@example.com ").unwrap());
        assert_eq!(a, b);
        let other = EmailIndexKey::generate();
        assert_ne!(a, other.digest(&Email::parse("alice@example.com").unwrap()));
        assert_eq!(
            EmailIndexKey::parse(&key.encode())
                .unwrap()
                .digest(&Email::parse("alice@example.com").unwrap()),
            a
        );
        assert!(EmailIndexKey::parse("short").is_err());
        assert!(!format!("{key:?}").contains(&key.encode()));
    }

    #[test]
    fn debug_output_never_shows_the_value() {
        let v = PersonalData::clear("carol@example.com");
        assert!(!format!("{v:?}").contains("carol"));
        let key = DataKey::generate();
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.expose_bytes())));
    }

    #[test]
    fn a_sealed_password_hash_opens_only_for_the_write_side_with_the_owners_key() {
        let owner = Uuid::new_v4();
        let key = DataKey::generate();
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
        let sealed = SealedPasswordHash::seal(&key, owner, &PasswordHash::new(phc.into()));
        assert!(sealed.is_sealed());
        assert!(!sealed.as_stored().contains("argon2"));
        assert_eq!(sealed.owner(), Some(owner));
        assert_eq!(sealed.open(Some(&key)).unwrap().expose_phc(), phc);
        // Erased (no key) or another key: nothing to verify against.
        assert!(sealed.open(None).is_none());
        assert!(sealed.open(Some(&DataKey::generate())).is_none());
        // Readers that open payloads by field name never reveal it.
        assert_eq!(Field::from_name("password_hash"), None);
        assert_eq!(Field::from_name("totp_secret"), None);
        // The addresses of an address change open as addresses.
        assert_eq!(Field::from_name("new_email"), Some(Field::Email));
        assert_eq!(Field::from_name("previous_email"), Some(Field::Email));
        // A hash from an event written before sealing is used as stored.
        let old = SealedPasswordHash::clear(PasswordHash::new(phc.into()));
        assert_eq!(old.open(None).unwrap().expose_phc(), phc);
        assert!(!format!("{old:?} {sealed:?}").contains("argon2"));
        // The JSON shape is the plain string, as in older event versions.
        let json = serde_json::to_value(&old).unwrap();
        assert_eq!(json, serde_json::json!(phc));
    }

    #[test]
    fn a_wrapped_data_key_opens_only_for_its_owner_with_a_configured_wrapping_key() {
        let owner = Uuid::new_v4();
        let key = DataKey::generate();
        let old = DataKeyWrappingKey::generate();
        let wrapping = DataKeyWrapping::new(old.clone(), vec![]);
        let stored = wrapping.wrap(owner, &key);
        assert_eq!(stored.len(), WRAPPED_DATA_KEY_LEN);
        assert!(!stored
            .windows(32)
            .any(|w| w == key.expose_bytes().as_slice()));
        assert!(wrapping.is_current(&stored));
        assert_eq!(
            wrapping.unwrap(owner, &stored).unwrap().expose_bytes(),
            key.expose_bytes()
        );
        // Another person, an altered byte: refused, never read as another key.
        assert_eq!(
            wrapping.unwrap(Uuid::new_v4(), &stored).err(),
            Some(UnreadableDataKey::Altered)
        );
        let mut altered = stored.clone();
        altered[WRAPPED_DATA_KEY_LEN - 1] ^= 1;
        assert_eq!(
            wrapping.unwrap(owner, &altered).err(),
            Some(UnreadableDataKey::Altered)
        );
        // Rotated: the new key wraps, the old one still unwraps.
        let new = DataKeyWrappingKey::generate();
        let rotated =
            DataKeyWrapping::parse(&format!("{}\n{}\n", new.encode(), old.encode())).unwrap();
        assert!(!rotated.is_current(&stored));
        assert_eq!(
            rotated.unwrap(owner, &stored).unwrap().expose_bytes(),
            key.expose_bytes()
        );
        // Without the old key: an error that names its id, not the key.
        let Err(UnreadableDataKey::UnknownWrappingKey { id }) =
            DataKeyWrapping::new(new.clone(), vec![]).unwrap(owner, &stored)
        else {
            panic!("a key wrapped with an unknown key was opened");
        };
        assert_eq!(id, old.id());
        // A key stored before wrapping existed is read as it is.
        let legacy = rotated.unwrap(owner, key.expose_bytes()).unwrap();
        assert_eq!(legacy.expose_bytes(), key.expose_bytes());
        assert!(!rotated.is_current(key.expose_bytes()));
        assert_eq!(
            rotated.unwrap(owner, &[1; 31]).err(),
            Some(UnreadableDataKey::Length { len: 31 })
        );
        assert!(DataKeyWrapping::parse("").is_err());
        assert!(DataKeyWrapping::parse("short").is_err());
        assert!(!format!("{rotated:?}").contains(&new.encode()));
    }

    #[test]
    fn a_known_vector_stays_openable() {
        // Pins the wire format: a value sealed by this release must open in every
        // later one.
        let owner = Uuid::from_u128(1);
        let key = DataKey::from_bytes([7; 32]);
        let sealed = key.seal_with_nonce(owner, Field::DisplayName, "Ada", [9; NONCE_LEN]);
        assert_eq!(
            sealed.as_str(),
            "sealed:v1:00000000-0000-0000-0000-000000000001:CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJ_xaDAuV_E29Z7smYmYHD-SUtsQ"
        );
        assert_eq!(sealed.open(Field::DisplayName, Some(&key)), "Ada");
    }
}
