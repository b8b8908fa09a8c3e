//! JSON Web Signatures (RFC 7515, compact form): the keys that sign JWTs (RFC 9068
//! access tokens, OpenID Connect ID tokens), their verification, and the JWKS
//! (RFC 7517) that publishes them.
//!
//! Three algorithms, each with its own key (RFC 7518, RFC 8037):
//!
//! - **EdDSA** (Ed25519) signs with the very key that signs PASETO v4.public tokens,
//!   under the same `kid` (its PASERK id): one key, one id, one rotation. A
//!   signature of one protocol is never a valid signature of the other, because
//!   the signed messages cannot coincide: PASETO signs its pre-authentication
//!   encoding, which begins with a little-endian count (`04 00 00 00 00 00 00 00`),
//!   a JWS signs ASCII `base64url(header).base64url(payload)` (see
//!   `docs/decisions/0024-jwt.md`).
//! - **ES256** (ECDSA P-256 with SHA-256, signature `r‖s`, 64 bytes), for gateways
//!   without EdDSA.
//! - **RS256** (RSASSA-PKCS1-v1_5 with SHA-256, RSA ≥ 2048 bits), because OpenID
//!   Connect Discovery requires it for ID tokens and many relying parties accept
//!   nothing else.
//!
//! Verification is strict: the header must name a `kid` this server knows, the
//! `alg` must be that key's algorithm (never `none`, never one chosen by the
//! token), `typ` must be one the caller accepts, and a `crit` header is refused.
//! A retired key verifies (and is published) until the end of its window, like the
//! PASETO keys it is rotated with.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::tokens::TokenError;

/// The JWS algorithms Keyledger signs with (`alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlg {
    EdDSA,
    ES256,
    RS256,
}

impl JwsAlg {
    /// Every algorithm, in the order the JWKS lists them.
    pub const ALL: [JwsAlg; 3] = [JwsAlg::EdDSA, JwsAlg::ES256, JwsAlg::RS256];

    /// The value of `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }

    /// The algorithm named by `alg`; `None` for any other (`none`, `HS256`…).
    pub fn parse(alg: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == alg)
    }
}

impl std::fmt::Display for JwsAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `typ` of RFC 9068 access tokens.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// A signing key of an algorithm with its own key file (ES256, RS256): the
/// private key as PKCS#8 PEM, and the public keys it replaced (SPKI PEM), each
/// verifying until the end of its window.
#[derive(Clone)]
pub struct JwsKeyMaterial {
    pub private_pem: String,
    pub retired: Vec<RetiredJwsKey>,
}

impl std::fmt::Debug for JwsKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwsKeyMaterial")
            .field("private_pem", &"<redacted>")
            .field("retired", &self.retired)
            .finish()
    }
}

/// A retired public key (SPKI PEM) and the end of its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredJwsKey {
    pub public_pem: String,
    pub verify_until: DateTime<Utc>,
}

enum Signer {
    Ed(ed25519_compact::SecretKey),
    Es(p256::ecdsa::SigningKey),
    Rs(Box<rsa::pkcs1v15::SigningKey<rsa::sha2::Sha256>>),
}

enum Verifier {
    Ed(ed25519_compact::PublicKey),
    Es(p256::ecdsa::VerifyingKey),
    Rs(Box<rsa::pkcs1v15::VerifyingKey<rsa::sha2::Sha256>>),
}

impl Signer {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            // Deterministic (RFC 8032), as PASETO's signatures with the same key.
            Self::Ed(key) => key.sign(message, None).to_vec(),
            Self::Es(key) => {
                // RFC 6979 nonces; JWS wants the fixed-size `r‖s` form, not DER.
                let signature: p256::ecdsa::Signature =
                    p256::ecdsa::signature::Signer::sign(key, message);
                signature.to_bytes().to_vec()
            }
            Self::Rs(key) => {
                use rsa::signature::SignatureEncoding as _;
                rsa::signature::Signer::sign(key.as_ref(), message).to_vec()
            }
        }
    }
}

impl Verifier {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Self::Ed(key) => ed25519_compact::Signature::from_slice(signature)
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
            Self::Es(key) => {
                // Exactly 64 bytes: a DER signature is not a JWS signature.
                signature.len() == 64
                    && p256::ecdsa::Signature::from_slice(signature).is_ok_and(|s| {
                        p256::ecdsa::signature::Verifier::verify(key, message, &s).is_ok()
                    })
            }
            Self::Rs(key) => rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|s| rsa::signature::Verifier::verify(key.as_ref(), message, &s).is_ok()),
        }
    }
}

/// A key of the set: what verifies with it, its JWK and its window.
struct PublishedKey {
    kid: String,
    alg: JwsAlg,
    verifier: Verifier,
    /// The public JWK (`kty`, `kid`, `alg`, `use` and the public parameters).
    jwk: Value,
    /// `None` for a signing key; else the end of the retired key's window.
    verify_until: Option<DateTime<Utc>>,
}

/// A JWS whose signature, key, algorithm and type checked out; its claims are
/// still to be judged by the caller.
#[derive(Debug, Clone)]
pub struct VerifiedJws {
    pub alg: JwsAlg,
    pub kid: String,
    pub typ: String,
    pub claims: Map<String, Value>,
}

/// The JWS keys of every algorithm: one signing key each (when configured) and the
/// retired ones still inside their window. Held by [`crate::TokenIssuer`].
#[derive(Default)]
pub struct JwtKeys {
    signing: HashMap<JwsAlg, (String, Signer)>,
    /// In the order published: by algorithm, the signing key first.
    keys: Vec<PublishedKey>,
    by_kid: HashMap<String, usize>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn bad_key(what: &str) -> TokenError {
    TokenError::BadKey(what.to_owned())
}

/// RFC 7638 thumbprint (SHA-256) of a JWK's required members, as the `kid` of
/// the keys that have no other name. `members` must be in lexicographic order.
fn thumbprint(members: &[(&str, &str)]) -> String {
    let canonical: Map<String, Value> = members
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    // serde_json's map is ordered by key and prints no whitespace: RFC 7638's form.
    let text = Value::Object(canonical).to_string();
    b64(&Sha256::digest(text.as_bytes()))
}

/// The verifier, kid and JWK members of a public key in SPKI PEM.
fn public_key(alg: JwsAlg, public_pem: &str) -> Result<(Verifier, String, Value), TokenError> {
    match alg {
        JwsAlg::EdDSA => Err(bad_key("EdDSA keys are the PASETO keys, not PEM files")),
        JwsAlg::ES256 => {
            let key = p256::ecdsa::VerifyingKey::from_public_key_pem(public_pem.trim())
                .map_err(|_| bad_key("an ES256 key is not a P-256 public key (SPKI PEM)"))?;
            Ok(es256_public(key))
        }
        JwsAlg::RS256 => {
            let key = rsa::RsaPublicKey::from_public_key_pem(public_pem.trim())
                .map_err(|_| bad_key("an RS256 key is not an RSA public key (SPKI PEM)"))?;
            rs256_public(key)
        }
    }
}

fn es256_public(key: p256::ecdsa::VerifyingKey) -> (Verifier, String, Value) {
    let point = key.to_sec1_point(false);
    // An uncompressed point always has both coordinates.
    let x = point.x().map(|x| b64(x)).unwrap_or_default();
    let y = point.y().map(|y| b64(y)).unwrap_or_default();
    let kid = thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)]);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
    (Verifier::Es(key), kid, jwk)
}

/// RSA keys shorter than this are refused (RFC 7518 §3.3 requires 2048 bits).
const RSA_MIN_BITS: usize = 2048;

fn rs256_public(key: rsa::RsaPublicKey) -> Result<(Verifier, String, Value), TokenError> {
    if key.size() * 8 < RSA_MIN_BITS {
        return Err(bad_key("an RS256 key is shorter than 2048 bits"));
    }
    let n = b64(&key.n().to_bytes_be());
    let e = b64(&key.e().to_bytes_be());
    let kid = thumbprint(&[("e", &e), ("kty", "RSA"), ("n", &n)]);
    let jwk = json!({"kty": "RSA", "n": n, "e": e});
    let verifier = Verifier::Rs(Box::new(rsa::pkcs1v15::VerifyingKey::new(key)));
    Ok((verifier, kid, jwk))
}

impl JwtKeys {
    /// The EdDSA keys: the PASETO signing key (64 bytes, seed ‖ public key) and
    /// the retired PASETO public keys (32 bytes), each under its PASERK id.
    pub(crate) fn eddsa(
        secret: &[u8],
        kid: &str,
        retired: &[(Vec<u8>, String, DateTime<Utc>)],
    ) -> Result<Self, TokenError> {
        let mut keys = Self::default();
        let secret = ed25519_compact::SecretKey::from_slice(secret)
            .map_err(|_| bad_key("the signing key is not an Ed25519 key"))?;
        let public = secret.public_key();
        keys.push(
            kid.to_owned(),
            JwsAlg::EdDSA,
            Verifier::Ed(public),
            ed_jwk(&public),
            None,
        );
        keys.signing
            .insert(JwsAlg::EdDSA, (kid.to_owned(), Signer::Ed(secret)));
        for (public, kid, until) in retired {
            let public = ed25519_compact::PublicKey::from_slice(public)
                .map_err(|_| bad_key("a verification key is not an Ed25519 key"))?;
            keys.push(
                kid.clone(),
                JwsAlg::EdDSA,
                Verifier::Ed(public),
                ed_jwk(&public),
                Some(*until),
            );
        }
        Ok(keys)
    }

    fn push(
        &mut self,
        kid: String,
        alg: JwsAlg,
        verifier: Verifier,
        params: Value,
        verify_until: Option<DateTime<Utc>>,
    ) {
        if self.by_kid.contains_key(&kid) {
            return;
        }
        let mut jwk = params;
        jwk["kid"] = Value::from(kid.as_str());
        jwk["alg"] = Value::from(alg.as_str());
        jwk["use"] = Value::from("sig");
        self.by_kid.insert(kid.clone(), self.keys.len());
        self.keys.push(PublishedKey {
            kid,
            alg,
            verifier,
            jwk,
            verify_until,
        });
    }

    /// Adds the ES256 or RS256 signing key and its retired public keys; replaces
    /// nothing (an algorithm already set is an error).
    pub(crate) fn add(&mut self, alg: JwsAlg, material: &JwsKeyMaterial) -> Result<(), TokenError> {
        if self.signing.contains_key(&alg) {
            return Err(bad_key("an algorithm's signing key is set twice"));
        }
        let pem = material.private_pem.trim();
        let (signer, (verifier, kid, jwk)) = match alg {
            JwsAlg::EdDSA => return Err(bad_key("EdDSA keys are the PASETO keys, not PEM files")),
            JwsAlg::ES256 => {
                let key = p256::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(|_| {
                    bad_key("the ES256 key is not a P-256 private key (PKCS#8 PEM)")
                })?;
                let public = es256_public(*key.verifying_key());
                (Signer::Es(key), public)
            }
            JwsAlg::RS256 => {
                let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                    .map_err(|_| bad_key("the RS256 key is not an RSA private key (PKCS#8 PEM)"))?;
                let public = rs256_public(key.to_public_key())?;
                (
                    Signer::Rs(Box::new(rsa::pkcs1v15::SigningKey::new(key))),
                    public,
                )
            }
        };
        self.push(kid.clone(), alg, verifier, jwk, None);
        self.signing.insert(alg, (kid, signer));
        for retired in &material.retired {
            let (verifier, kid, jwk) = public_key(alg, &retired.public_pem)?;
            self.push(kid, alg, verifier, jwk, Some(retired.verify_until));
        }
        Ok(())
    }

    /// A fresh ES256 or RS256 key as `(PKCS#8 PEM private key, SPKI PEM public
    /// key)`, for key files and tests. RSA keys have 2048 bits.
    pub fn generate(alg: JwsAlg) -> Result<(String, String), TokenError> {
        let line = rsa::pkcs8::LineEnding::LF;
        match alg {
            JwsAlg::EdDSA => Err(bad_key("EdDSA keys are the PASETO keys")),
            JwsAlg::ES256 => {
                let key = loop {
                    let mut scalar = [0u8; 32];
                    getrandom::fill(&mut scalar).map_err(|_| TokenError::Signing)?;
                    // Below the group order and not zero: all but ~2^-32 of draws.
                    if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&scalar) {
                        break key;
                    }
                };
                use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
                let private = key
                    .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                    .map_err(|_| TokenError::Signing)?;
                let public = key
                    .verifying_key()
                    .to_public_key_pem(p256::pkcs8::LineEnding::LF)
                    .map_err(|_| TokenError::Signing)?;
                Ok((private.to_string(), public))
            }
            JwsAlg::RS256 => {
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_MIN_BITS)
                    .map_err(|_| TokenError::Signing)?;
                let private = key.to_pkcs8_pem(line).map_err(|_| TokenError::Signing)?;
                let public = key
                    .to_public_key()
                    .to_public_key_pem(line)
                    .map_err(|_| TokenError::Signing)?;
                Ok((private.to_string(), public))
            }
        }
    }

    /// The public key (SPKI PEM) of an ES256 or RS256 private key (PKCS#8 PEM).
    pub fn public_pem_of(alg: JwsAlg, private_pem: &str) -> Result<String, TokenError> {
        let line = rsa::pkcs8::LineEnding::LF;
        let pem = private_pem.trim();
        match alg {
            JwsAlg::EdDSA => Err(bad_key("EdDSA keys are the PASETO keys")),
            JwsAlg::ES256 => {
                use p256::pkcs8::EncodePublicKey as _;
                p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
                    .map_err(|_| bad_key("not a P-256 private key (PKCS#8 PEM)"))?
                    .verifying_key()
                    .to_public_key_pem(p256::pkcs8::LineEnding::LF)
                    .map_err(|_| TokenError::Signing)
            }
            JwsAlg::RS256 => rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                .map_err(|_| bad_key("not an RSA private key (PKCS#8 PEM)"))?
                .to_public_key()
                .to_public_key_pem(line)
                .map_err(|_| TokenError::Signing),
        }
    }

    /// The `kid` of a public key in SPKI PEM, as the JWKS publishes it (RFC 7638
    /// thumbprint), for `keyledger keys list`.
    pub fn kid_of(alg: JwsAlg, public_pem: &str) -> Result<String, TokenError> {
        public_key(alg, public_pem).map(|(_, kid, _)| kid)
    }

    /// The algorithms that have a signing key.
    pub fn algorithms(&self) -> Vec<JwsAlg> {
        JwsAlg::ALL
            .into_iter()
            .filter(|alg| self.signing.contains_key(alg))
            .collect()
    }

    /// The `kid` new tokens of `alg` are signed under.
    pub fn signing_kid(&self, alg: JwsAlg) -> Option<&str> {
        self.signing.get(&alg).map(|(kid, _)| kid.as_str())
    }

    /// Compact JWS with header {"alg","typ","kid"} over `claims` (a JSON object).
    pub fn sign(&self, alg: JwsAlg, typ: &str, claims: &Value) -> Result<String, TokenError> {
        if !claims.is_object() {
            return Err(TokenError::Signing);
        }
        let (kid, signer) = self
            .signing
            .get(&alg)
            .ok_or(TokenError::NoSigningKey(alg.as_str()))?;
        let header = json!({"alg": alg.as_str(), "typ": typ, "kid": kid});
        let mut token = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = signer.sign(token.as_bytes());
        token.push('.');
        token.push_str(&b64(&signature));
        Ok(token)
    }

    /// The public keys of every algorithm in use, signing and retired-but-in-window.
    pub fn jwks(&self) -> Value {
        self.jwks_at(Utc::now())
    }

    /// [`Self::jwks`] as of `now`.
    pub fn jwks_at(&self, now: DateTime<Utc>) -> Value {
        let mut keys: Vec<&PublishedKey> = self
            .keys
            .iter()
            .filter(|k| k.verify_until.is_none_or(|until| now < until))
            .collect();
        // By algorithm, each algorithm's signing key first.
        keys.sort_by_key(|k| {
            (
                JwsAlg::ALL.iter().position(|a| *a == k.alg),
                k.verify_until.is_some(),
            )
        });
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }

    /// The end of the window of the key `kid`: `Some(None)` for a signing key,
    /// `None` for a key this set does not hold.
    pub(crate) fn window(&self, kid: &str) -> Option<Option<DateTime<Utc>>> {
        self.by_kid.get(kid).map(|&i| self.keys[i].verify_until)
    }

    /// Checks a compact JWS: its form, its header (a known `kid`, that key's `alg`,
    /// a `typ` among `types` compared as RFC 7515 says — case-insensitively, with
    /// or without `application/` — and no `crit`), the key's window at `now`, and
    /// the signature. The claims are returned for the caller to judge.
    pub fn verify(
        &self,
        token: &str,
        types: &[&str],
        now: DateTime<Utc>,
    ) -> Result<VerifiedJws, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed)
        };
        let header: Map<String, Value> =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(JwsAlg::parse)
            .ok_or(TokenError::Invalid)?;
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(TokenError::Invalid)?;
        let typ = header
            .get("typ")
            .and_then(Value::as_str)
            .ok_or(TokenError::Invalid)?;
        let bare = typ
            .get(..12)
            .filter(|p| p.eq_ignore_ascii_case("application/"))
            .map_or(typ, |_| &typ[12..]);
        if !types.iter().any(|t| t.eq_ignore_ascii_case(bare)) {
            return Err(TokenError::Invalid);
        }
        // No extension is understood, so none may be critical (RFC 7515 §4.1.11).
        if header.contains_key("crit") {
            return Err(TokenError::Invalid);
        }
        let index = *self.by_kid.get(kid).ok_or(TokenError::UnknownKey)?;
        let key = &self.keys[index];
        if key.alg != alg {
            return Err(TokenError::Invalid);
        }
        if key.verify_until.is_some_and(|until| now >= until) {
            return Err(TokenError::RetiredKey);
        }
        let signed = token.len() - signature.len() - 1;
        if !key
            .verifier
            .verify(&token.as_bytes()[..signed], &decode(signature)?)
        {
            return Err(TokenError::Invalid);
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Invalid)?;
        Ok(VerifiedJws {
            alg,
            kid: key.kid.clone(),
            typ: bare.to_ascii_lowercase(),
            claims,
        })
    }
}

fn ed_jwk(public: &ed25519_compact::PublicKey) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(public.as_ref())})
}

/// What an access token issued to an OAuth client says about the grant: the
/// client (`client_id`), the scopes granted (`scope`, space-separated; not written
/// when empty) and, for JWTs, the algorithm that signs it.
#[derive(Debug, Clone, Copy)]
pub struct JwtGrant<'a> {
    pub client_id: &'a str,
    pub scope: &'a str,
    pub alg: JwsAlg,
}

/// [`JwtGrant`] for a PASETO access token issued to an OAuth client (no `alg`).
#[derive(Debug, Clone, Copy)]
pub struct ClientGrant<'a> {
    pub client_id: &'a str,
    pub scope: &'a str,
}

impl<'a> From<&JwtGrant<'a>> for ClientGrant<'a> {
    fn from(grant: &JwtGrant<'a>) -> Self {
        Self {
            client_id: grant.client_id,
            scope: grant.scope,
        }
    }
}

#[cfg(test)]
impl JwtKeys {
    /// Signs `header` and `claims` as given with the signing key of `alg`, for
    /// tests of what verification refuses.
    fn sign_raw(&self, alg: JwsAlg, header: &Value, claims: &Value) -> String {
        let (_, signer) = &self.signing[&alg];
        let mut token = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = signer.sign(token.as_bytes());
        token.push('.');
        token.push_str(&b64(&signature));
        token
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;
    use crate::tokens::{AccessScope, SessionClaims, SubjectKind, TokenIssuer, TokenSettings};

    /// One RSA key per test process: generating one takes a while.
    fn rsa_pair() -> &'static (String, String) {
        static PAIR: OnceLock<(String, String)> = OnceLock::new();
        PAIR.get_or_init(|| JwtKeys::generate(JwsAlg::RS256).unwrap())
    }

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: "https://keyledger.test".into(),
            audience: "platform".into(),
            access_ttl: Duration::from_secs(900),
            verified_cache_entries: 1000,
        }
    }

    fn material(private_pem: &str) -> JwsKeyMaterial {
        JwsKeyMaterial {
            private_pem: private_pem.to_owned(),
            retired: Vec::new(),
        }
    }

    /// An issuer with keys of all three algorithms.
    fn issuer() -> TokenIssuer {
        let (secret, _) = TokenIssuer::generate_key().unwrap();
        let (es256, _) = JwtKeys::generate(JwsAlg::ES256).unwrap();
        TokenIssuer::new(&secret, &[], settings())
            .unwrap()
            .with_jws_key(JwsAlg::ES256, &material(&es256))
            .unwrap()
            .with_jws_key(JwsAlg::RS256, &material(&rsa_pair().0))
            .unwrap()
    }

    fn session(factors: &[String]) -> SessionClaims<'_> {
        SessionClaims {
            session_id: Uuid::new_v4(),
            started_at: Utc::now() - chrono::Duration::minutes(3),
            email_verified: true,
            factors,
        }
    }

    fn grant(alg: JwsAlg) -> JwtGrant<'static> {
        JwtGrant {
            client_id: "app-client",
            scope: "openid profile",
            alg,
        }
    }

    fn parts(token: &str) -> (Value, Value) {
        let mut parts = token.split('.');
        let mut next = || {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap()
        };
        (next(), next())
    }

    #[test]
    fn jwt_keys_of_every_algorithm_are_published_with_distinct_kids_and_public_parameters_only() {
        let issuer = issuer();
        let jwks = issuer.jwt_keys().jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 3);
        let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
        assert_eq!(algs, ["EdDSA", "ES256", "RS256"]);
        let mut kids: Vec<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
        kids.dedup();
        assert_eq!(kids.len(), 3);
        for key in keys {
            assert_eq!(key["use"], "sig");
            let members: Vec<&str> = key
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
                assert!(!members.contains(&private), "{key}");
            }
        }
        assert_eq!(keys[0]["kty"], "OKP");
        assert_eq!(keys[0]["crv"], "Ed25519");
        // One key, one id: the EdDSA JWK is the PASETO key under its PASERK id.
        assert_eq!(keys[0]["kid"], issuer.signing_kid());
        assert_eq!(keys[1]["kty"], "EC");
        assert_eq!(keys[1]["crv"], "P-256");
        assert_eq!(keys[2]["kty"], "RSA");
        assert_eq!(keys[2]["e"], "AQAB");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(keys[2]["n"].as_str().unwrap())
                .unwrap()
                .len(),
            256
        );
    }

    #[test]
    fn jwt_kids_of_es256_and_rs256_keys_are_rfc_7638_thumbprints() {
        // RFC 7638 §3.1's example key and thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(&[("e", "AQAB"), ("kty", "RSA"), ("n", n)]),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn jwt_access_tokens_of_all_three_algorithms_verify_with_an_independent_library_from_the_jwks()
    {
        let issuer = issuer();
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(issuer.jwt_keys().jwks()).unwrap();
        let factors = vec!["pwd".to_owned(), "otp".to_owned(), "mfa".to_owned()];
        for (alg, theirs) in [
            (JwsAlg::EdDSA, jsonwebtoken::Algorithm::EdDSA),
            (JwsAlg::ES256, jsonwebtoken::Algorithm::ES256),
            (JwsAlg::RS256, jsonwebtoken::Algorithm::RS256),
        ] {
            let user = Uuid::new_v4();
            let (token, claims) = issuer
                .issue_jwt_for_session(user, session(&factors), None, &grant(alg))
                .unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, theirs);
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            let kid = header.kid.unwrap();
            assert_eq!(Some(kid.as_str()), issuer.jwt_keys().signing_kid(alg));
            let jwk = jwks.find(&kid).expect("the kid is in the JWKS");
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(theirs);
            validation.set_issuer(&["https://keyledger.test"]);
            validation.set_audience(&["platform"]);
            validation.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud"]);
            let data = jsonwebtoken::decode::<Value>(&token, &key, &validation)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            let theirs = data.claims;
            assert_eq!(theirs["sub"], user.to_string());
            assert_eq!(theirs["client_id"], "app-client");
            assert_eq!(theirs["scope"], "openid profile");
            assert_eq!(theirs["jti"], claims.token_id.to_string());
            assert_eq!(theirs["amr"], serde_json::json!(["pwd", "otp", "mfa"]));
            assert!(theirs["auth_time"].is_i64());
            // And ours agrees.
            assert_eq!(issuer.verify(&token).unwrap(), claims);
        }
    }

    #[test]
    fn a_jwt_access_token_verifies_to_the_claims_of_the_paseto_token() {
        let issuer = issuer();
        let factors = vec!["pwd".to_owned()];
        let session = session(&factors);
        let scope = AccessScope {
            organization_id: Uuid::new_v4(),
            roles: vec!["admin".into()],
        };
        let user = Uuid::new_v4();
        let client = ClientGrant {
            client_id: "app-client",
            scope: "openid profile",
        };
        let (paseto, from_paseto) = issuer
            .issue_for_client(user, session, Some(&scope), &client)
            .unwrap();
        let (jwt, from_jwt) = issuer
            .issue_jwt_for_session(user, session, Some(&scope), &grant(JwsAlg::EdDSA))
            .unwrap();
        let (paseto, jwt) = (
            issuer.verify(&paseto).unwrap(),
            issuer.verify(&jwt).unwrap(),
        );
        assert_eq!(paseto, from_paseto);
        assert_eq!(jwt, from_jwt);
        for claims in [&paseto, &jwt] {
            assert_eq!(claims.user_id, user);
            assert_eq!(claims.session_id, session.session_id);
            assert_eq!(claims.kind, SubjectKind::User);
            assert_eq!(claims.organization_id, Some(scope.organization_id));
            assert_eq!(claims.roles, scope.roles);
            assert_eq!(claims.email_verified, Some(true));
            assert_eq!(claims.amr, factors);
            assert_eq!(claims.client_id.as_deref(), Some("app-client"));
            assert_eq!(claims.scope.as_deref(), Some("openid profile"));
            // To the microsecond in both: the session cut-off compares microseconds.
            assert_eq!(
                claims.authenticated_at.map(|t| t.timestamp_micros()),
                Some(session.started_at.timestamp_micros())
            );
        }
        // The first-party token has neither.
        let (token, _) = issuer
            .issue(user, session.session_id, session.started_at, None, false)
            .unwrap();
        let first_party = issuer.verify(&token).unwrap();
        assert_eq!((first_party.client_id, first_party.scope), (None, None));
    }

    #[test]
    fn jwt_auth_time_is_whole_seconds_with_the_microseconds_beside_it() {
        let issuer = issuer();
        let started_at = DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap();
        let session = SessionClaims {
            started_at,
            ..session(&[])
        };
        let (token, _) = issuer
            .issue_jwt_for_session(Uuid::new_v4(), session, None, &grant(JwsAlg::EdDSA))
            .unwrap();
        let (_, claims) = parts(&token);
        assert_eq!(claims["auth_time"], 1_780_000_000);
        assert_eq!(claims["auth_time_us"], 1_780_000_000_123_456i64);
        // A precise time outside the second `auth_time` names is refused.
        let mut forged = claims.clone();
        forged["auth_time_us"] = Value::from(1_780_000_001_000_000i64);
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": issuer.signing_kid()});
        let token = issuer.jwt_keys().sign_raw(JwsAlg::EdDSA, &header, &forged);
        assert!(matches!(issuer.verify(&token), Err(TokenError::Invalid)));
    }

    #[test]
    fn jwt_service_account_tokens_round_trip() {
        let issuer = issuer();
        let scope = AccessScope {
            organization_id: Uuid::new_v4(),
            roles: vec!["auditor".into()],
        };
        let account = Uuid::new_v4();
        let (token, claims) = issuer
            .issue_jwt_for_service_account(account, &scope, None, &grant(JwsAlg::ES256))
            .unwrap();
        let verified = issuer.verify(&token).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.kind, SubjectKind::ServiceAccount);
        assert_eq!(verified.session_id, verified.token_id);
        assert_eq!(verified.authenticated_at, None);
        // Dated no earlier than `not_before`, in whole seconds.
        let later = Utc::now() + chrono::Duration::seconds(30);
        let (_, claims) = issuer
            .issue_jwt_for_service_account(account, &scope, Some(later), &grant(JwsAlg::ES256))
            .unwrap();
        assert_eq!(claims.issued_at.timestamp(), later.timestamp());
    }

    fn access_claims(issuer: &TokenIssuer) -> Value {
        let now = Utc::now().timestamp();
        json!({
            "iss": "https://keyledger.test", "aud": "platform", "sub": Uuid::new_v4().to_string(),
            "iat": now, "exp": now + 600, "jti": Uuid::new_v4().to_string(),
            "sid": Uuid::new_v4().to_string(), "client_id": "app-client",
            "auth_time": now, "kind": "user", "x": issuer.signing_kid(),
        })
    }

    #[test]
    fn jwt_verification_refuses_other_algorithms_types_and_headers() {
        let issuer = issuer();
        let keys = issuer.jwt_keys();
        let claims = access_claims(&issuer);
        let kid = |alg| keys.signing_kid(alg).unwrap().to_owned();
        let good = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid(JwsAlg::ES256)});
        assert!(issuer
            .verify(&keys.sign_raw(JwsAlg::ES256, &good, &claims))
            .is_ok());
        let media_type =
            json!({"alg": "ES256", "typ": "application/AT+JWT", "kid": kid(JwsAlg::ES256)});
        assert!(issuer
            .verify(&keys.sign_raw(JwsAlg::ES256, &media_type, &claims))
            .is_ok());

        let refused = [
            // Another algorithm than the key's, even one we sign with.
            json!({"alg": "RS256", "typ": "at+jwt", "kid": kid(JwsAlg::ES256)}),
            json!({"alg": "none", "typ": "at+jwt", "kid": kid(JwsAlg::ES256)}),
            json!({"alg": "HS256", "typ": "at+jwt", "kid": kid(JwsAlg::ES256)}),
            // No kid; an unknown kid.
            json!({"alg": "ES256", "typ": "at+jwt"}),
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "someone-else"}),
            // Not an access token: an ID token (`JWT`), or no type at all.
            json!({"alg": "ES256", "typ": "JWT", "kid": kid(JwsAlg::ES256)}),
            json!({"alg": "ES256", "kid": kid(JwsAlg::ES256)}),
            // A critical extension nobody here understands.
            json!({"alg": "ES256", "typ": "at+jwt", "kid": kid(JwsAlg::ES256), "crit": ["exp"], "exp": 1}),
        ];
        for header in refused {
            let token = keys.sign_raw(JwsAlg::ES256, &header, &claims);
            assert!(issuer.verify(&token).is_err(), "{header}");
        }
        // `none` with an empty signature.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert!(issuer.verify(&format!("{header}.{payload}.")).is_err());
        // HS256 keyed with the public key's bytes (the classic confusion).
        let jwks = keys.jwks();
        let rsa_n = jwks["keys"][2]["n"].as_str().unwrap();
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                typ: Some("at+jwt".into()),
                kid: Some(kid(JwsAlg::RS256)),
                ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
            },
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(rsa_n.as_bytes()),
        )
        .unwrap();
        assert!(issuer.verify(&forged).is_err());
    }

    #[test]
    fn jwt_tampering_and_wrong_claims_are_refused() {
        let issuer = issuer();
        let keys = issuer.jwt_keys();
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": issuer.signing_kid()});
        let (token, _) = issuer
            .issue_jwt_for_session(Uuid::new_v4(), session(&[]), None, &grant(JwsAlg::RS256))
            .unwrap();
        // Another payload under the same signature.
        let mut pieces: Vec<&str> = token.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(access_claims(&issuer).to_string());
        pieces[1] = &other;
        assert!(matches!(
            issuer.verify(&pieces.join(".")),
            Err(TokenError::Invalid)
        ));
        // A DER or truncated signature.
        let (es, _) = issuer
            .issue_jwt_for_session(Uuid::new_v4(), session(&[]), None, &grant(JwsAlg::ES256))
            .unwrap();
        let cut = &es[..es.len() - 4];
        assert!(issuer.verify(cut).is_err());
        for bad in ["", "a.b", "a.b.c.d", "e30.e30.", "!!.e30.e30"] {
            assert!(issuer.verify(bad).is_err(), "{bad}");
        }

        let now = Utc::now().timestamp();
        let with = |name: &str, value: Value| {
            let mut claims = access_claims(&issuer);
            claims[name] = value;
            keys.sign_raw(JwsAlg::EdDSA, &header, &claims)
        };
        let refused = [
            ("iss", Value::from("https://elsewhere.test")),
            ("aud", Value::from("other")),
            ("aud", json!(["platform", "other"])),
            ("exp", Value::from(now - 1)),
            ("exp", Value::from(now + 365 * 86400)),
            ("iat", Value::from(now + 600)),
            ("nbf", Value::from(now + 600)),
            ("client_id", Value::Null),
            ("sub", Value::from("not-a-uuid")),
            ("roles", json!(["admin"])),
            ("iat", Value::from("2026-01-01T00:00:00Z")),
        ];
        for (name, value) in refused {
            let token = with(name, value.clone());
            assert!(issuer.verify(&token).is_err(), "{name}: {value}");
        }
        let mut claims = access_claims(&issuer);
        claims.as_object_mut().unwrap().remove("client_id");
        let token = keys.sign_raw(JwsAlg::EdDSA, &header, &claims);
        assert!(issuer.verify(&token).is_err(), "client_id is required");
        // The PASETO verifier does not take a JWT's place, nor the reverse.
        let (paseto, _) = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        assert!(keys
            .verify(&paseto, &[ACCESS_TOKEN_TYP], Utc::now())
            .is_err());
    }

    #[test]
    fn a_retired_jwt_key_verifies_and_is_published_until_its_window_ends() {
        let (paseto, _) = TokenIssuer::generate_key().unwrap();
        let (old_es, old_es_public) = JwtKeys::generate(JwsAlg::ES256).unwrap();
        let (old_paseto, old_paseto_public) = TokenIssuer::generate_key().unwrap();
        let before = TokenIssuer::new(&old_paseto, &[], settings())
            .unwrap()
            .with_jws_key(JwsAlg::ES256, &material(&old_es))
            .unwrap();
        let (es_token, _) = before
            .issue_jwt_for_session(Uuid::new_v4(), session(&[]), None, &grant(JwsAlg::ES256))
            .unwrap();
        let (ed_token, _) = before
            .issue_jwt_for_session(Uuid::new_v4(), session(&[]), None, &grant(JwsAlg::EdDSA))
            .unwrap();

        let end = Utc::now() + chrono::Duration::minutes(16);
        let (new_es, _) = JwtKeys::generate(JwsAlg::ES256).unwrap();
        let after = TokenIssuer::new(
            &paseto,
            &[crate::RetiredPublicKey {
                paserk: old_paseto_public,
                verify_until: end,
            }],
            settings(),
        )
        .unwrap()
        .with_jws_key(
            JwsAlg::ES256,
            &JwsKeyMaterial {
                private_pem: new_es,
                retired: vec![RetiredJwsKey {
                    public_pem: old_es_public.clone(),
                    verify_until: end,
                }],
            },
        )
        .unwrap();
        assert!(after.verify(&es_token).is_ok());
        assert!(after.verify(&ed_token).is_ok());
        let kids = |jwks: Value| -> Vec<String> {
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect()
        };
        let old_kid = JwtKeys::kid_of(JwsAlg::ES256, &old_es_public).unwrap();
        let now = Utc::now();
        let listed = kids(after.jwt_keys().jwks_at(now));
        assert_eq!(listed.len(), 4, "two EdDSA and two ES256 keys");
        assert!(listed.contains(&old_kid));
        assert!(listed.contains(&before.signing_kid().to_owned()));
        // At the end of the window: refused (from the cache too) and no longer listed.
        assert!(matches!(
            after.verify_at(&es_token, end),
            Err(TokenError::RetiredKey)
        ));
        assert!(matches!(
            after.verify_at(&ed_token, end),
            Err(TokenError::RetiredKey)
        ));
        let listed = kids(after.jwt_keys().jwks_at(end));
        assert_eq!(listed.len(), 2);
        assert!(!listed.contains(&old_kid));
    }

    #[test]
    fn a_jwt_verified_before_is_answered_from_memory_until_it_expires() {
        let issuer = issuer();
        let (token, claims) = issuer
            .issue_jwt_for_session(Uuid::new_v4(), session(&[]), None, &grant(JwsAlg::RS256))
            .unwrap();
        let now = Utc::now();
        assert_eq!(issuer.verify_at(&token, now).unwrap(), claims);
        assert_eq!(issuer.verified.len(), 1);
        assert_eq!(issuer.verify_at(&token, now).unwrap(), claims);
        assert_eq!(issuer.verified.len(), 1);
        let later = claims.expires_at + chrono::Duration::seconds(1);
        assert!(matches!(
            issuer.verify_at(&token, later),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn jwt_signing_without_a_key_for_the_algorithm_fails() {
        let (secret, _) = TokenIssuer::generate_key().unwrap();
        let issuer = TokenIssuer::new(&secret, &[], settings()).unwrap();
        assert_eq!(issuer.jwt_keys().algorithms(), [JwsAlg::EdDSA]);
        assert!(matches!(
            issuer.issue_jwt_for_session(Uuid::new_v4(), session(&[]), None, &grant(JwsAlg::RS256)),
            Err(TokenError::NoSigningKey("RS256"))
        ));
        assert!(issuer
            .issue_jwt_for_session(Uuid::new_v4(), session(&[]), None, &grant(JwsAlg::EdDSA))
            .is_ok());
    }

    #[test]
    fn jwt_key_files_round_trip_and_weak_or_wrong_keys_are_refused() {
        let (private, public) = JwtKeys::generate(JwsAlg::ES256).unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            JwtKeys::public_pem_of(JwsAlg::ES256, &private).unwrap(),
            public
        );
        assert_eq!(
            JwtKeys::public_pem_of(JwsAlg::RS256, &rsa_pair().0).unwrap(),
            rsa_pair().1
        );
        let mut keys = JwtKeys::default();
        // An EC key is not an RSA key, nor the reverse.
        assert!(keys.add(JwsAlg::RS256, &material(&private)).is_err());
        assert!(keys.add(JwsAlg::ES256, &material(&rsa_pair().0)).is_err());
        assert!(keys.add(JwsAlg::EdDSA, &material(&private)).is_err());
        // 1024-bit RSA.
        let weak = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let weak = weak.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        assert!(keys.add(JwsAlg::RS256, &material(&weak)).is_err());
    }
}
