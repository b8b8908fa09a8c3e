//! Token signing keys on disk, and their rotation.
//!
//! The signing key lives in one file (PASERK `k4.secret.…`, mode 0600). Rotating
//! replaces it with a new key and records the old public key in a sibling file
//! (`<key file>.retired`, JSON lines) together with the time until which tokens it
//! signed can still be alive (rotation time + the access-token lifetime). The
//! server verifies with the signing key plus every retired key still within that
//! window, and `/v1/auth/keys` publishes them all, so a rotation never invalidates
//! a live token. The window's end is checked on every verification: a running
//! server stops accepting a retired key at that instant, not at its next restart.
//! Running servers pick up a rotation (the new key, and the old key's window) when
//! they restart.
//!
//! `rotate --revoke-old` is for a leaked key: the old key gets no window at all,
//! so once the servers restart nothing it signed verifies, forgeries included.
//!
//! JWTs are signed with three keys (see `keyledger_commands::jwt`): EdDSA with the
//! PASETO key itself, and ES256 and RS256 with keys of their own beside it
//! (`<key file>.es256.pem`, `<key file>.rs256.pem`: PKCS#8 PEM, mode 0600, their
//! retired public keys as SPKI PEM in `<key file>.es256.pem.retired` and
//! `<key file>.rs256.pem.retired`). They are created by `keys generate`, or at the
//! first start that finds them missing, and `keys rotate` rotates all three with
//! the same window: ID tokens live as long as access tokens.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_commands::{
    JwsAlg, JwsKeyMaterial, JwtKeys, RetiredJwsKey, RetiredPublicKey, TokenIssuer, CLOCK_SKEW,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KeysetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line} is not a retired-key record: {reason}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} already exists; use `keyledger keys rotate` to replace a key")]
    Exists { path: PathBuf },
    #[error("key material is not valid: {0}")]
    Key(String),
}

/// A public key that no longer signs but may still verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredKey {
    /// PASERK `k4.public.…` (the signing key), SPKI PEM (ES256 and RS256 keys).
    pub public: String,
    pub retired_at: DateTime<Utc>,
    /// Tokens it signed have all expired after this.
    pub verify_until: DateTime<Utc>,
    /// Retired with `--revoke-old` (leaked): its window ended at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// The keys a server starts with.
#[derive(Debug, Clone)]
pub struct Keyset {
    /// PASERK `k4.secret.…`
    pub signing: String,
    /// Retired signing keys still inside their window, with its end.
    pub verifying: Vec<RetiredPublicKey>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeysetError + '_ {
    move |source| KeysetError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where retired keys of `key_file` are recorded.
pub fn retired_file(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".retired");
    PathBuf::from(name)
}

/// Writes a file only the owner can read, atomically (temp file + rename).
fn write_private(path: &Path, contents: &str) -> Result<(), KeysetError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A directory made for keys is the owner's alone (an existing one, such as
        // /etc/keyledger, keeps the mode its operator gave it).
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(io(dir))?;
    }
    let temp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temp).map_err(io(&temp))?;
        file.write_all(contents.as_bytes()).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
    }
    std::fs::rename(&temp, path).map_err(io(path))
}

/// Creates a new signing key file; refuses to overwrite one.
pub fn generate(key_file: &Path) -> Result<String, KeysetError> {
    if key_file.exists() {
        return Err(KeysetError::Exists {
            path: key_file.to_owned(),
        });
    }
    let (secret, public) =
        TokenIssuer::generate_key().map_err(|e| KeysetError::Key(e.to_string()))?;
    write_private(key_file, &secret)?;
    Ok(public)
}

/// Reads the signing key, creating it when `create_if_missing` (first start).
pub fn load(
    key_file: &Path,
    create_if_missing: bool,
    now: DateTime<Utc>,
) -> Result<Keyset, KeysetError> {
    let signing = match std::fs::read_to_string(key_file) {
        Ok(key) => key.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create_if_missing => {
            generate(key_file)?;
            tracing::warn!(path = %key_file.display(), "no signing key configured; generated one");
            std::fs::read_to_string(key_file)
                .map_err(io(key_file))?
                .trim()
                .to_owned()
        }
        Err(e) => return Err(io(key_file)(e)),
    };
    let verifying = retired(key_file)?
        .into_iter()
        .filter(|k| k.verify_until > now)
        .map(|k| RetiredPublicKey {
            paserk: k.public,
            verify_until: k.verify_until,
        })
        .collect();
    Ok(Keyset { signing, verifying })
}

/// Every retired key recorded for `key_file`, oldest first.
pub fn retired(key_file: &Path) -> Result<Vec<RetiredKey>, KeysetError> {
    let path = retired_file(key_file);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| KeysetError::Corrupt {
                path: path.clone(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// How the old key leaves when the signing key is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKey {
    /// It keeps verifying for one access-token lifetime (plus the clock skew), so
    /// tokens it signed live out their lifetime: a routine rotation.
    Retire,
    /// It stops verifying at once (after the servers restart): a leaked key, whose
    /// forgeries must not be accepted for another lifetime. Users' access tokens
    /// signed with it end too; their refresh tokens still work.
    Revoke,
}

/// The new keys after [`rotate`].
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new signing key's PASERK `k4.public.…` (it signs EdDSA JWTs too).
    pub public: String,
    /// The new ES256 and RS256 keys' ids (as the JWKS publishes them).
    pub jws: Vec<(JwsAlg, String)>,
}

/// Replaces the signing key and the ES256 and RS256 keys beside it (creating
/// those that are missing); each old public key keeps verifying for
/// `access_token_ttl` plus [`CLOCK_SKEW`], or not at all with [`OldKey::Revoke`].
pub fn rotate(
    key_file: &Path,
    access_token_ttl: Duration,
    now: DateTime<Utc>,
    old_key: OldKey,
) -> Result<Rotated, KeysetError> {
    let old = std::fs::read_to_string(key_file).map_err(io(key_file))?;
    let old_public = public_of(old.trim())?;
    retire(key_file, old_public, access_token_ttl, now, old_key)?;
    let (secret, public) =
        TokenIssuer::generate_key().map_err(|e| KeysetError::Key(e.to_string()))?;
    write_private(key_file, &secret)?;
    let mut jws = Vec::new();
    for alg in JWS_FILE_ALGS {
        let file = jws_key_file(key_file, alg);
        let kid = match std::fs::read_to_string(&file) {
            Ok(old) => {
                let old_public = JwtKeys::public_pem_of(alg, &old).map_err(key_error)?;
                retire(&file, old_public, access_token_ttl, now, old_key)?;
                let (private, public) = JwtKeys::generate(alg).map_err(key_error)?;
                write_private(&file, &private)?;
                JwtKeys::kid_of(alg, &public).map_err(key_error)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate_jws(key_file, alg)?,
            Err(e) => return Err(io(&file)(e)),
        };
        jws.push((alg, kid));
    }
    Ok(Rotated { public, jws })
}

fn key_error(e: keyledger_commands::TokenError) -> KeysetError {
    KeysetError::Key(e.to_string())
}

/// Records `old_public`, the public half of the key in `file` about to be
/// replaced, in the file's retired list (dropping records whose window passed).
/// Written before the new key: if we die in between, the old key still verifies
/// and still signs, which is safe.
fn retire(
    file: &Path,
    old_public: String,
    access_token_ttl: Duration,
    now: DateTime<Utc>,
    old_key: OldKey,
) -> Result<(), KeysetError> {
    let window = match old_key {
        OldKey::Retire => chrono::Duration::from_std(access_token_ttl + CLOCK_SKEW)
            .unwrap_or(chrono::Duration::days(1)),
        OldKey::Revoke => chrono::Duration::zero(),
    };
    let mut records = retired(file)?;
    // Drop records whose window has passed; they verify nothing any more.
    records.retain(|k| k.verify_until > now);
    records.push(RetiredKey {
        public: old_public,
        retired_at: now,
        verify_until: now + window,
        revoked: old_key == OldKey::Revoke,
    });
    let mut text = String::new();
    for record in &records {
        text.push_str(&serde_json::to_string(record).map_err(|e| KeysetError::Key(e.to_string()))?);
        text.push('\n');
    }
    write_private(&retired_file(file), &text)
}

/// The algorithms whose keys have files of their own (EdDSA signs with the
/// PASETO key).
pub const JWS_FILE_ALGS: [JwsAlg; 2] = [JwsAlg::ES256, JwsAlg::RS256];

/// Where the JWS key of `alg` (ES256 or RS256) sits: beside `key_file`, as
/// `<key file>.es256.pem` or `<key file>.rs256.pem`.
pub fn jws_key_file(key_file: &Path, alg: JwsAlg) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(format!(".{}.pem", alg.as_str().to_ascii_lowercase()));
    PathBuf::from(name)
}

/// Creates the key file of `alg` beside `key_file`; refuses to overwrite one.
/// Returns the new key's `kid`.
pub fn generate_jws(key_file: &Path, alg: JwsAlg) -> Result<String, KeysetError> {
    let file = jws_key_file(key_file, alg);
    if file.exists() {
        return Err(KeysetError::Exists { path: file });
    }
    let (private, public) = JwtKeys::generate(alg).map_err(key_error)?;
    write_private(&file, &private)?;
    JwtKeys::kid_of(alg, &public).map_err(key_error)
}

/// What `keyledger keys generate` created.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    /// The signing key's PASERK `k4.public.…`, if it was created.
    pub public: Option<String>,
    /// The ES256 and RS256 keys created, with their ids.
    pub jws: Vec<(JwsAlg, String)>,
}

/// Creates whichever of the three key files is missing (the signing key and the
/// ES256 and RS256 keys beside it); refuses when none is.
pub fn generate_all(key_file: &Path) -> Result<Generated, KeysetError> {
    let mut generated = Generated::default();
    if !key_file.exists() {
        generated.public = Some(generate(key_file)?);
    }
    for alg in JWS_FILE_ALGS {
        if !jws_key_file(key_file, alg).exists() {
            generated.jws.push((alg, generate_jws(key_file, alg)?));
        }
    }
    if generated.public.is_none() && generated.jws.is_empty() {
        return Err(KeysetError::Exists {
            path: key_file.to_owned(),
        });
    }
    Ok(generated)
}

/// Reads the key of `alg` beside `key_file` and its retired public keys still
/// inside their window, creating the key (once, mode 0600) when it is missing.
pub fn load_jws(
    key_file: &Path,
    alg: JwsAlg,
    now: DateTime<Utc>,
) -> Result<JwsKeyMaterial, KeysetError> {
    let file = jws_key_file(key_file, alg);
    let private_pem = match std::fs::read_to_string(&file) {
        Ok(key) => key,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kid = generate_jws(key_file, alg)?;
            tracing::warn!(
                path = %file.display(),
                alg = alg.as_str(),
                kid = %kid,
                "no JWT signing key of this algorithm; generated one (servers sharing the \
                 signing key must share this file too: copy it to every node)"
            );
            std::fs::read_to_string(&file).map_err(io(&file))?
        }
        Err(e) => return Err(io(&file)(e)),
    };
    let retired = retired(&file)?
        .into_iter()
        .filter(|k| k.verify_until > now)
        .map(|k| RetiredJwsKey {
            public_pem: k.public,
            verify_until: k.verify_until,
        })
        .collect();
    Ok(JwsKeyMaterial {
        private_pem,
        retired,
    })
}

/// Reads the audit key (PASERK `k4.secret.…`) that signs chain checkpoints,
/// creating it (mode 0600) when missing. A key of its own, apart from the token
/// signing key: auditors hold its public half, and rotating one leaves the other.
pub fn load_or_create_audit_key(path: &Path) -> Result<String, KeysetError> {
    match std::fs::read_to_string(path) {
        Ok(key) => Ok(key.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (secret, public) = keyledger_projections::AuditKey::generate()
                .map_err(|e| KeysetError::Key(e.to_string()))?;
            write_private(path, &secret)?;
            tracing::warn!(
                path = %path.display(),
                public_key = %public,
                "no audit key configured; generated one (give its public key to auditors)"
            );
            Ok(secret)
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// Reads the email index key (unpadded base64url), creating it (mode 0600) when
/// missing. Losing it makes every account unfindable by address, so it belongs
/// in the same backups as the signing and audit keys.
pub fn load_or_create_email_index_key(path: &Path) -> Result<String, KeysetError> {
    match std::fs::read_to_string(path) {
        Ok(key) => Ok(key.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = keyledger_domain::EmailIndexKey::generate().encode();
            write_private(path, &key)?;
            tracing::warn!(
                path = %path.display(),
                "no email index key configured; generated one (back it up with the signing key)"
            );
            Ok(key)
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// The data key wrapping key file's content (one key per line, the first one
/// wrapping), created with a fresh key when missing (0600, like every key file).
pub fn load_or_create_data_key_wrapping_key(path: &Path) -> Result<String, KeysetError> {
    match std::fs::read_to_string(path) {
        Ok(keys) => Ok(keys),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = keyledger_domain::DataKeyWrappingKey::generate().encode();
            write_private(path, &key)?;
            tracing::warn!(
                path = %path.display(),
                "no data key wrapping key configured; generated one (back it up with the \
                 signing key: without it no personal data can be opened)"
            );
            Ok(key)
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// The PASERK public key and id of a secret key, via a throwaway issuer.
pub fn public_of(secret: &str) -> Result<String, KeysetError> {
    let issuer = TokenIssuer::new(
        secret,
        &[],
        keyledger_commands::TokenSettings {
            issuer: String::new(),
            audience: String::new(),
            access_ttl: Duration::from_secs(1),
            verified_cache_entries: 0,
        },
    )
    .map_err(|e| KeysetError::Key(e.to_string()))?;
    Ok(issuer.public_keys()[0].paserk.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_key_file() -> PathBuf {
        std::env::temp_dir()
            .join(format!("keyledger-keyset-{}", uuid::Uuid::new_v4()))
            .join("signing-key.paserk")
    }

    #[test]
    fn generate_refuses_to_overwrite() {
        let file = temp_key_file();
        generate(&file).unwrap();
        assert!(matches!(generate(&file), Err(KeysetError::Exists { .. })));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    }

    #[test]
    fn rotation_keeps_the_old_key_verifying_until_its_tokens_expire() {
        let file = temp_key_file();
        let now = Utc::now();
        let first = load(&file, true, now).unwrap();
        let first_public = public_of(&first.signing).unwrap();
        let ttl = Duration::from_secs(900);
        let second_public = rotate(&file, ttl, now, OldKey::Retire).unwrap().public;
        let after = load(&file, false, now).unwrap();
        assert_ne!(after.signing, first.signing);
        assert_eq!(public_of(&after.signing).unwrap(), second_public);
        assert_eq!(
            after.verifying,
            vec![RetiredPublicKey {
                paserk: first_public,
                verify_until: now + chrono::Duration::seconds(900 + 60),
            }]
        );
        // After the window, the old key is gone.
        let later = now + chrono::Duration::seconds(901 + 60);
        assert!(load(&file, false, later).unwrap().verifying.is_empty());
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_revoked_old_key_verifies_nothing_after_the_rotation() {
        let file = temp_key_file();
        let now = Utc::now();
        load(&file, true, now).unwrap();
        rotate(&file, Duration::from_secs(900), now, OldKey::Revoke).unwrap();
        assert!(load(&file, false, now).unwrap().verifying.is_empty());
        let records = retired(&file).unwrap();
        assert_eq!(records.len(), 1);
        assert!(records[0].revoked);
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    }

    #[test]
    fn jws_keys_are_created_once_beside_the_signing_key_and_rotated_with_it() {
        let file = temp_key_file();
        let now = Utc::now();
        let generated = generate_all(&file).unwrap();
        assert!(generated.public.is_some());
        assert_eq!(generated.jws.len(), 2);
        assert!(matches!(
            generate_all(&file),
            Err(KeysetError::Exists { .. })
        ));
        let es256 = jws_key_file(&file, JwsAlg::ES256);
        assert!(es256
            .to_string_lossy()
            .ends_with("signing-key.paserk.es256.pem"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for alg in JWS_FILE_ALGS {
                let mode = std::fs::metadata(jws_key_file(&file, alg))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        let before = load_jws(&file, JwsAlg::ES256, now).unwrap();
        assert!(before.retired.is_empty());
        // Loading again reads the same key.
        assert_eq!(
            load_jws(&file, JwsAlg::ES256, now).unwrap().private_pem,
            before.private_pem
        );

        let rotated = rotate(&file, Duration::from_secs(900), now, OldKey::Retire).unwrap();
        assert_eq!(rotated.jws.len(), 2);
        let after = load_jws(&file, JwsAlg::ES256, now).unwrap();
        assert_ne!(after.private_pem, before.private_pem);
        assert_eq!(
            after.retired,
            vec![RetiredJwsKey {
                public_pem: JwtKeys::public_pem_of(JwsAlg::ES256, &before.private_pem).unwrap(),
                verify_until: now + chrono::Duration::seconds(900 + 60),
            }]
        );
        let rs256 = load_jws(&file, JwsAlg::RS256, now).unwrap();
        assert_eq!(rs256.retired.len(), 1);
        let later = now + chrono::Duration::seconds(901 + 60);
        assert!(load_jws(&file, JwsAlg::ES256, later)
            .unwrap()
            .retired
            .is_empty());
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_missing_jws_key_file_is_created_at_load() {
        let file = temp_key_file();
        generate(&file).unwrap();
        let loaded = load_jws(&file, JwsAlg::ES256, Utc::now()).unwrap();
        assert!(loaded
            .private_pem
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(jws_key_file(&file, JwsAlg::ES256).exists());
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_missing_key_file_is_an_error_unless_creation_is_allowed() {
        let file = temp_key_file();
        assert!(load(&file, false, Utc::now()).is_err());
    }
}
