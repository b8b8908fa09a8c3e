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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_commands::{RetiredPublicKey, TokenIssuer, CLOCK_SKEW};
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
    /// PASERK `k4.public.…`
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

/// Replaces the signing key; the old public key keeps verifying for
/// `access_token_ttl` plus [`CLOCK_SKEW`], or not at all with [`OldKey::Revoke`].
/// Returns the new public key.
pub fn rotate(
    key_file: &Path,
    access_token_ttl: Duration,
    now: DateTime<Utc>,
    old_key: OldKey,
) -> Result<String, KeysetError> {
    let old = std::fs::read_to_string(key_file).map_err(io(key_file))?;
    let old_public = public_of(old.trim())?;
    let window = match old_key {
        OldKey::Retire => chrono::Duration::from_std(access_token_ttl + CLOCK_SKEW)
            .unwrap_or(chrono::Duration::days(1)),
        OldKey::Revoke => chrono::Duration::zero(),
    };
    let mut records = retired(key_file)?;
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
    // Retired list first: if we die in between, the old key still verifies and
    // still signs, which is safe.
    write_private(&retired_file(key_file), &text)?;
    let (secret, public) =
        TokenIssuer::generate_key().map_err(|e| KeysetError::Key(e.to_string()))?;
    write_private(key_file, &secret)?;
    Ok(public)
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
        let second_public = rotate(&file, ttl, now, OldKey::Retire).unwrap();
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
    fn a_missing_key_file_is_an_error_unless_creation_is_allowed() {
        let file = temp_key_file();
        assert!(load(&file, false, Utc::now()).is_err());
    }
}
