//! Password hashes made by other systems, accepted only from `keyledger users import`.
//!
//! Moving existing users in must not force them all to reset their password, so an
//! imported account keeps the hash its old system made until its first successful
//! login, which re-hashes the password with Argon2id (`PasswordRehashed`). Nothing
//! here ever makes a hash: new passwords are always Argon2id.
//!
//! Accepted textual forms (what Python's `passlib`, `bcrypt`, `werkzeug`, Django
//! and Node's `bcryptjs` write):
//! - bcrypt: `$2a$`, `$2b$`, `$2y$` (modular crypt, 60 characters);
//! - PBKDF2-HMAC-SHA256: passlib `$pbkdf2-sha256$<rounds>$<ab64 salt>$<ab64 hash>`,
//!   the PHC form `$pbkdf2-sha256$i=<rounds>,l=<len>$<b64 salt>$<b64 hash>`, Django
//!   `pbkdf2_sha256$<rounds>$<salt>$<base64 hash>` and Werkzeug
//!   `pbkdf2:sha256:<rounds>$<salt>$<hex hash>`;
//! - scrypt: passlib / PHC `$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>` and
//!   Werkzeug `scrypt:<N>:<r>:<p>$<salt>$<hex hash>`;
//! - Argon2 PHC strings (`$argon2id$`, `$argon2i$`, `$argon2d$`), verified by the
//!   Argon2 pool itself.
//!
//! Every comparison of computed and stored output is constant-time.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Bounds on imported parameters: a hash whose check would take minutes or
/// gigabytes is refused at import instead of stalling a login later.
const MAX_PBKDF2_ROUNDS: u32 = 10_000_000;
/// bcrypt's cost is a power of two: 17 already takes seconds.
const MAX_BCRYPT_COST: u32 = 17;
const MAX_SCRYPT_LOG_N: u8 = 20;
const MAX_SCRYPT_MEMORY: u64 = 1 << 30;
const MAX_OUTPUT_LEN: usize = 128;

/// Why an imported hash was refused (no part of the hash is repeated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedHash {
    #[error("unrecognised password hash format")]
    UnknownFormat,
    #[error("malformed {0} hash")]
    Malformed(&'static str),
    #[error("{0} parameters out of the accepted range")]
    OutOfRange(&'static str),
}

/// A parsed legacy hash, ready to verify.
#[derive(Clone, PartialEq, Eq)]
pub enum LegacyHash {
    Bcrypt(String),
    Pbkdf2Sha256 {
        rounds: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Scrypt {
        log_n: u8,
        r: u32,
        p: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl std::fmt::Debug for LegacyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bcrypt(_) => "LegacyHash::Bcrypt(<redacted>)",
            Self::Pbkdf2Sha256 { .. } => "LegacyHash::Pbkdf2Sha256(<redacted>)",
            Self::Scrypt { .. } => "LegacyHash::Scrypt(<redacted>)",
        })
    }
}

/// passlib's "adapted base64" (`.` for `+`, no padding) and PHC's B64 (no
/// padding) both decode with this once `.` is mapped back to `+`.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn ab64(text: &str, what: &'static str) -> Result<Vec<u8>, MalformedHash> {
    B64.decode(text.replace('.', "+"))
        .map_err(|_| MalformedHash::Malformed(what))
}

fn output(hash: Vec<u8>, what: &'static str) -> Result<Vec<u8>, MalformedHash> {
    if hash.len() < 16 || hash.len() > MAX_OUTPUT_LEN {
        return Err(MalformedHash::Malformed(what));
    }
    Ok(hash)
}

/// Whether `stored` is an Argon2 PHC string (verified by the Argon2 pool).
pub fn is_argon2(stored: &str) -> bool {
    stored.starts_with("$argon2")
}

/// The algorithm of a hash `keyledger users import` accepts (`bcrypt`,
/// `pbkdf2-sha256`, `scrypt`, `argon2`), or why it is refused. An Argon2 PHC
/// string must parse with parameters the Argon2 pool can run.
pub fn format_of(stored: &str) -> Result<&'static str, MalformedHash> {
    if is_argon2(stored) {
        let parsed =
            argon2::PasswordHash::new(stored).map_err(|_| MalformedHash::Malformed("argon2"))?;
        argon2::Algorithm::try_from(parsed.algorithm.as_str())
            .map_err(|_| MalformedHash::Malformed("argon2"))?;
        let params =
            argon2::Params::try_from(&parsed).map_err(|_| MalformedHash::OutOfRange("argon2"))?;
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err(MalformedHash::Malformed("argon2"));
        }
        // The pool allocates a one-off area for a hash above its own policy.
        if params.m_cost() > 1 << 20 || params.t_cost() > 64 {
            return Err(MalformedHash::OutOfRange("argon2"));
        }
        return Ok("argon2");
    }
    Ok(match LegacyHash::parse(stored)? {
        LegacyHash::Bcrypt(_) => "bcrypt",
        LegacyHash::Pbkdf2Sha256 { .. } => "pbkdf2-sha256",
        LegacyHash::Scrypt { .. } => "scrypt",
    })
}

impl LegacyHash {
    /// Recognises one of the accepted forms (module documentation).
    pub fn parse(stored: &str) -> Result<Self, MalformedHash> {
        if let Some(rest) = ["$2a$", "$2b$", "$2y$"]
            .iter()
            .find_map(|prefix| stored.strip_prefix(prefix))
        {
            let parts: bcrypt::HashParts = stored
                .parse()
                .map_err(|_| MalformedHash::Malformed("bcrypt"))?;
            if rest.len() != 56 {
                return Err(MalformedHash::Malformed("bcrypt"));
            }
            if parts.get_cost() > MAX_BCRYPT_COST {
                return Err(MalformedHash::OutOfRange("bcrypt"));
            }
            return Ok(Self::Bcrypt(stored.to_owned()));
        }
        if let Some(rest) = stored.strip_prefix("$pbkdf2-sha256$") {
            return parse_passlib_pbkdf2(rest);
        }
        if let Some(rest) = stored.strip_prefix("$scrypt$") {
            return parse_phc_scrypt(rest);
        }
        if let Some(rest) = stored.strip_prefix("pbkdf2_sha256$") {
            const WHAT: &str = "Django pbkdf2_sha256";
            let [rounds, salt, hash] = split3(rest, '$').ok_or(MalformedHash::Malformed(WHAT))?;
            let hash = STANDARD
                .decode(hash)
                .map_err(|_| MalformedHash::Malformed(WHAT))?;
            return pbkdf2(rounds.parse().ok(), salt.as_bytes().to_vec(), hash, WHAT);
        }
        if let Some(rest) = stored.strip_prefix("pbkdf2:sha256:") {
            const WHAT: &str = "Werkzeug pbkdf2:sha256";
            let [rounds, salt, hash] = split3(rest, '$').ok_or(MalformedHash::Malformed(WHAT))?;
            let hash = hex::decode(hash).map_err(|_| MalformedHash::Malformed(WHAT))?;
            return pbkdf2(rounds.parse().ok(), salt.as_bytes().to_vec(), hash, WHAT);
        }
        if let Some(rest) = stored.strip_prefix("scrypt:") {
            const WHAT: &str = "Werkzeug scrypt";
            let (costs, rest) = rest.split_once('$').ok_or(MalformedHash::Malformed(WHAT))?;
            let (salt, hash) = rest.split_once('$').ok_or(MalformedHash::Malformed(WHAT))?;
            let [n, r, p] = split3(costs, ':').ok_or(MalformedHash::Malformed(WHAT))?;
            let n: u64 = n.parse().map_err(|_| MalformedHash::Malformed(WHAT))?;
            if !n.is_power_of_two() || n < 2 {
                return Err(MalformedHash::Malformed(WHAT));
            }
            let hash = hex::decode(hash).map_err(|_| MalformedHash::Malformed(WHAT))?;
            return scrypt(
                n.trailing_zeros() as u8,
                r.parse().ok(),
                p.parse().ok(),
                salt.as_bytes().to_vec(),
                hash,
                WHAT,
            );
        }
        Err(MalformedHash::UnknownFormat)
    }

    /// Checks `password` against the hash; the outputs are compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            // `bcrypt::verify` compares with `subtle` and, like every bcrypt,
            // reads at most 72 bytes of the password.
            Self::Bcrypt(stored) => bcrypt::verify(password, stored).unwrap_or(false),
            Self::Pbkdf2Sha256 { rounds, salt, hash } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, *rounds, &mut out);
                out.ct_eq(hash).into()
            }
            Self::Scrypt {
                log_n,
                r,
                p,
                salt,
                hash,
            } => {
                let Ok(params) = scrypt::Params::new(*log_n, *r, *p, hash.len()) else {
                    return false;
                };
                let mut out = vec![0u8; hash.len()];
                if scrypt::scrypt(password, salt, &params, &mut out).is_err() {
                    return false;
                }
                out.ct_eq(hash).into()
            }
        }
    }
}

fn split3(text: &str, separator: char) -> Option<[&str; 3]> {
    let mut parts = text.split(separator);
    let found = [parts.next()?, parts.next()?, parts.next()?];
    parts.next().is_none().then_some(found)
}

fn pbkdf2(
    rounds: Option<u32>,
    salt: Vec<u8>,
    hash: Vec<u8>,
    what: &'static str,
) -> Result<LegacyHash, MalformedHash> {
    let rounds = rounds.ok_or(MalformedHash::Malformed(what))?;
    if rounds == 0 || rounds > MAX_PBKDF2_ROUNDS {
        return Err(MalformedHash::OutOfRange(what));
    }
    if salt.is_empty() {
        return Err(MalformedHash::Malformed(what));
    }
    Ok(LegacyHash::Pbkdf2Sha256 {
        rounds,
        salt,
        hash: output(hash, what)?,
    })
}

fn scrypt(
    log_n: u8,
    r: Option<u32>,
    p: Option<u32>,
    salt: Vec<u8>,
    hash: Vec<u8>,
    what: &'static str,
) -> Result<LegacyHash, MalformedHash> {
    let (Some(r), Some(p)) = (r, p) else {
        return Err(MalformedHash::Malformed(what));
    };
    let memory = 128u64 * u64::from(r) * (1u64 << log_n.min(63));
    if log_n == 0
        || log_n > MAX_SCRYPT_LOG_N
        || r == 0
        || p == 0
        || p > 16
        || memory > MAX_SCRYPT_MEMORY
    {
        return Err(MalformedHash::OutOfRange(what));
    }
    let hash = output(hash, what)?;
    scrypt::Params::new(log_n, r, p, hash.len()).map_err(|_| MalformedHash::OutOfRange(what))?;
    Ok(LegacyHash::Scrypt {
        log_n,
        r,
        p,
        salt,
        hash,
    })
}

/// `<rounds>$<salt>$<hash>` (passlib) or `i=<rounds>,l=<len>$<salt>$<hash>` (PHC).
fn parse_passlib_pbkdf2(rest: &str) -> Result<LegacyHash, MalformedHash> {
    const WHAT: &str = "pbkdf2-sha256";
    let [params, salt, hash] = split3(rest, '$').ok_or(MalformedHash::Malformed(WHAT))?;
    let rounds = if params.starts_with("i=") {
        params
            .split(',')
            .find_map(|kv| kv.strip_prefix("i="))
            .and_then(|v| v.parse().ok())
    } else {
        params.parse().ok()
    };
    pbkdf2(rounds, ab64(salt, WHAT)?, ab64(hash, WHAT)?, WHAT)
}

/// `ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>` (passlib and PHC).
fn parse_phc_scrypt(rest: &str) -> Result<LegacyHash, MalformedHash> {
    const WHAT: &str = "scrypt";
    let [params, salt, hash] = split3(rest, '$').ok_or(MalformedHash::Malformed(WHAT))?;
    let (mut log_n, mut r, mut p) = (None, None, None);
    for kv in params.split(',') {
        match kv.split_once('=') {
            Some(("ln", v)) => log_n = v.parse::<u8>().ok(),
            Some(("r", v)) => r = v.parse().ok(),
            Some(("p", v)) => p = v.parse().ok(),
            _ => return Err(MalformedHash::Malformed(WHAT)),
        }
    }
    let log_n = log_n.ok_or(MalformedHash::Malformed(WHAT))?;
    scrypt(log_n, r, p, ab64(salt, WHAT)?, ab64(hash, WHAT)?, WHAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_truncated_forms_are_refused() {
        for bad in [
            "",
            "plaintext",
            "$1$abc$def",
            "$2b$04$short",
            "$pbkdf2-sha256$29000$onlysalt",
            "$pbkdf2-sha256$0$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$scrypt$ln=40,r=8,p=1$c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "pbkdf2:sha256:600000$salt$nothex",
        ] {
            assert!(LegacyHash::parse(bad).is_err(), "{bad:?} accepted");
        }
        // A cost that would stall every login for minutes.
        let slow = "$2b$31$......................YgIDy4hFBdVlc/6LHnD9mX488r9cLd2";
        assert_eq!(
            LegacyHash::parse(slow),
            Err(MalformedHash::OutOfRange("bcrypt"))
        );
    }

    #[test]
    fn a_werkzeug_pbkdf2_hash_verifies() {
        // hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 1, 32).hex()
        let stored =
            "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b";
        let hash = LegacyHash::parse(stored).unwrap();
        assert!(hash.verify(b"password"));
        assert!(!hash.verify(b"Password"));
    }
}
