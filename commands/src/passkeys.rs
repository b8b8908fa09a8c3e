//! Where passkeys meet storage and webauthn-rs: the relying party, the
//! ceremonies between their start and finish, and the claims that keep a
//! credential id to one account.
//!
//! A ceremony's state (webauthn-rs's `PasskeyRegistration`, `PasskeyAuthentication`
//! or `DiscoverableAuthentication`: the challenge and, for a sign-in, the allowed
//! credentials) lives in `webauthn_ceremonies`, so any node can finish what
//! another started. webauthn-rs's finish does not consume the state: the same
//! answer checks twice against one state. A ceremony is therefore *taken*
//! (deleted and returned in one statement) before its answer is checked: a
//! challenge works once, whether the answer was right or not.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use keyledger_storage::{with_writer, Database, Id};
use url::Url;
use uuid::Uuid;
use webauthn_rs::prelude::{
    AttestationCaList, AttestationCaListBuilder, Webauthn, WebauthnBuilder,
};

use crate::claims::{ClaimTable, KeyedClaims};

/// What a ceremony is for: a challenge of one purpose does not finish another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyPurpose {
    /// A signed-in account adds a passkey.
    Registration,
    /// Sign-in with a passkey alone (with or without an account hint).
    SignIn,
    /// The second step of a login that proved a password (keyed by the login
    /// step's challenge id).
    SecondFactor,
    /// A new account that signs in with a passkey and has no password.
    SignUp,
}

impl CeremonyPurpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::SignIn => "sign_in",
            Self::SecondFactor => "second_factor",
            Self::SignUp => "sign_up",
        }
    }
}

/// A ceremony taken from storage: whom it is for and webauthn-rs's state.
pub struct Ceremony {
    pub user_id: Option<Uuid>,
    pub state: String,
}

/// The `webauthn_ceremonies` table, on either back end.
#[derive(Clone)]
pub struct Ceremonies {
    db: Database,
}

impl Ceremonies {
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone() }
    }

    /// Keeps a ceremony until `expires_at` (replacing one of the same id: a login
    /// step asked for its passkey options again). Expired rows go at the same
    /// time, so the table holds only live ceremonies.
    pub async fn put(
        &self,
        challenge_id: Uuid,
        purpose: CeremonyPurpose,
        user_id: Option<Uuid>,
        state: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO webauthn_ceremonies (challenge_id, purpose, user_id, state, expires_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (challenge_id) DO UPDATE
                    SET purpose = excluded.purpose, user_id = excluded.user_id,
                        state = excluded.state, expires_at = excluded.expires_at",
            )
            .bind(Id(challenge_id))
            .bind(purpose.as_str())
            .bind(user_id.map(Id))
            .bind(state)
            .bind(expires_at)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Takes (deletes) the live ceremony `challenge_id` of `purpose`: `None`
    /// when there is none (never started, already taken, expired, or another
    /// purpose's).
    pub async fn take(
        &self,
        challenge_id: Uuid,
        purpose: CeremonyPurpose,
    ) -> Result<Option<Ceremony>, sqlx::Error> {
        let now = Utc::now();
        let row: Option<(Option<Id>, String)> = with_writer!(self.db, |conn| {
            sqlx::query_as(
                "DELETE FROM webauthn_ceremonies
                  WHERE challenge_id = $1 AND purpose = $2 AND expires_at > $3
                  RETURNING user_id, state",
            )
            .bind(Id(challenge_id))
            .bind(purpose.as_str())
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?
        });
        Ok(row.map(|(user_id, state)| Ceremony {
            user_id: user_id.map(Uuid::from),
            state,
        }))
    }

    /// Drops every ceremony of an account (erasure).
    pub async fn forget_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM webauthn_ceremonies WHERE user_id = $1")
                .bind(Id(user_id))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }
}

const PASSKEY_CLAIMS: ClaimTable = ClaimTable {
    table: "passkey_claims",
    key: "digest",
    holder: "user_id",
    aggregate_type: "user",
};

/// A claim older than this whose account never appeared in the event log (a
/// passkey-first registration that died before its commit) may be taken over.
const STALE_AFTER: Duration = Duration::minutes(5);

/// `passkey_claims`: a credential id belongs to one account. Keyed by the id's
/// HMAC under a server key, so the table holds no credential id.
#[derive(Clone)]
pub struct PasskeyClaims(KeyedClaims);

impl PasskeyClaims {
    pub fn new(db: &Database, key: [u8; 32]) -> Self {
        Self(KeyedClaims::new(db, key, &PASSKEY_CLAIMS, STALE_AFTER))
    }

    /// Claims `credential_id` for `user_id`: false when another account holds it
    /// (or this one does already: a credential is registered once).
    pub async fn claim(&self, credential_id: &[u8], user_id: Uuid) -> Result<bool, sqlx::Error> {
        self.0.claim(self.0.digest(&[credential_id]), user_id).await
    }

    /// Gives a claim back (the passkey was removed, or its registration failed).
    pub async fn release(&self, credential_id: &[u8], user_id: Uuid) -> Result<(), sqlx::Error> {
        self.0
            .release(self.0.digest(&[credential_id]), user_id)
            .await
    }

    /// Drops every claim of an account (erasure, a reset of its factors).
    pub async fn release_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        self.0.release_holder(user_id).await
    }
}

/// The relying party passkeys are made for: its id (a registrable domain that
/// every allowed origin is, or is under), its name, and the origins whose pages
/// may run a ceremony.
#[derive(Clone)]
pub struct RelyingParty {
    pub(crate) webauthn: Webauthn,
    rp_id: String,
    /// When set, only authenticators of these models (attested by their
    /// vendor's root certificate) may be registered.
    pub(crate) attestation: Option<AttestationCaList>,
}

/// An authenticator model an attested registration accepts: its AAGUID, and the
/// root certificate its vendor signs its attestations with (as the FIDO
/// Metadata Service publishes them).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestedAuthenticator {
    pub aaguid: Uuid,
    pub description: String,
    /// PEM.
    pub root_ca: String,
}

/// Why a relying party was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelyingPartyError {
    #[error("at least one allowed origin is needed")]
    NoOrigin,
    #[error("the origin {origin} is not the RP id {rp_id} or a subdomain of it")]
    OriginOutsideRpId { origin: String, rp_id: String },
    #[error("webauthn-rs refused the relying party: {0}")]
    Refused(String),
    #[error("the attestation allowlist is empty")]
    EmptyAllowlist,
    #[error("the root certificate of authenticator {aaguid} is not a PEM certificate: {reason}")]
    BadRootCertificate { aaguid: Uuid, reason: String },
}

impl RelyingParty {
    /// Refuses an origin whose host is not `rp_id` or under it: a browser would
    /// refuse every ceremony from it, so a server configured so could never
    /// register a passkey.
    pub fn new(rp_id: &str, rp_name: &str, origins: &[Url]) -> Result<Self, RelyingPartyError> {
        let (first, rest) = origins.split_first().ok_or(RelyingPartyError::NoOrigin)?;
        for origin in origins {
            let host = origin.host_str().unwrap_or_default();
            let inside = host == rp_id || host.ends_with(&format!(".{rp_id}"));
            if !inside || !matches!(origin.scheme(), "https" | "http") {
                return Err(RelyingPartyError::OriginOutsideRpId {
                    origin: origin.to_string(),
                    rp_id: rp_id.to_owned(),
                });
            }
        }
        let refused =
            |e: webauthn_rs::prelude::WebauthnError| RelyingPartyError::Refused(e.to_string());
        let mut builder = WebauthnBuilder::new(rp_id, first)
            .map_err(refused)?
            .rp_name(rp_name);
        for origin in rest {
            builder = builder.append_allowed_origin(origin);
        }
        Ok(Self {
            webauthn: builder.build().map_err(refused)?,
            rp_id: rp_id.to_owned(),
            attestation: None,
        })
    }

    /// Registrations accept only `authenticators` from now on: attestation
    /// `direct`, the attestation chain checked against the vendor's root, the
    /// model's AAGUID on the list, and no synced passkeys (a synced key has no
    /// model to vouch for).
    pub fn attested_only(
        mut self,
        authenticators: &[AttestedAuthenticator],
    ) -> Result<Self, RelyingPartyError> {
        if authenticators.is_empty() {
            return Err(RelyingPartyError::EmptyAllowlist);
        }
        let mut list = AttestationCaListBuilder::new();
        for authenticator in authenticators {
            list.insert_device_pem(
                authenticator.root_ca.as_bytes(),
                authenticator.aaguid,
                authenticator.description.clone(),
                Default::default(),
            )
            .map_err(|e| RelyingPartyError::BadRootCertificate {
                aaguid: authenticator.aaguid,
                reason: format!("{e:?}"),
            })?;
        }
        self.attestation = Some(list.build());
        Ok(self)
    }

    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }
}

impl fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelyingParty")
            .field("rp_id", &self.rp_id)
            .finish_non_exhaustive()
    }
}

impl Default for RelyingParty {
    /// A development server's: `localhost`, its default address.
    fn default() -> Self {
        let origin = Url::parse("http://localhost:8080").expect("a valid URL");
        Self::new("localhost", "Keyledger", &[origin]).expect("a valid relying party")
    }
}

#[cfg(test)]
mod tests {
    use keyledger_storage::on_both_back_ends;

    use super::*;

    on_both_back_ends! {
        async fn a_credential_id_belongs_to_one_account_until_released(db) {
            let claims = PasskeyClaims::new(&db, [7; 32]);
            let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
            assert!(claims.claim(b"credential", alice).await.unwrap());
            assert!(!claims.claim(b"credential", bob).await.unwrap(), "another account");
            assert!(!claims.claim(b"credential", alice).await.unwrap(), "registered once");
            claims.release(b"credential", bob).await.unwrap();
            assert!(!claims.claim(b"credential", bob).await.unwrap(), "only its holder releases it");
            claims.release_account(alice).await.unwrap();
            assert!(claims.claim(b"credential", bob).await.unwrap());
        }
    }

    on_both_back_ends! {
        async fn a_ceremony_is_taken_once_for_its_purpose_and_not_after_it_expires(db) {
            let ceremonies = Ceremonies::new(&db);
            let (id, user) = (Uuid::new_v4(), Uuid::new_v4());
            let later = Utc::now() + Duration::minutes(5);
            ceremonies.put(id, CeremonyPurpose::SignIn, Some(user), "{}", later).await.unwrap();
            assert!(ceremonies.take(id, CeremonyPurpose::Registration).await.unwrap().is_none(), "another purpose");
            let taken = ceremonies.take(id, CeremonyPurpose::SignIn).await.unwrap().expect("live");
            assert_eq!((taken.user_id, taken.state.as_str()), (Some(user), "{}"));
            assert!(ceremonies.take(id, CeremonyPurpose::SignIn).await.unwrap().is_none(), "once");

            let expired = Uuid::new_v4();
            let past = Utc::now() - Duration::seconds(1);
            ceremonies.put(expired, CeremonyPurpose::SignIn, None, "{}", past).await.unwrap();
            assert!(ceremonies.take(expired, CeremonyPurpose::SignIn).await.unwrap().is_none());

            let erased = Uuid::new_v4();
            ceremonies.put(erased, CeremonyPurpose::SecondFactor, Some(user), "{}", later).await.unwrap();
            ceremonies.forget_account(user).await.unwrap();
            assert!(ceremonies.take(erased, CeremonyPurpose::SecondFactor).await.unwrap().is_none());
        }
    }

    #[test]
    fn an_origin_outside_the_rp_id_is_refused() {
        let origin = |s: &str| Url::parse(s).unwrap();
        assert!(
            RelyingParty::new("example.com", "X", &[origin("https://login.example.com")]).is_ok()
        );
        assert!(RelyingParty::new("example.com", "X", &[origin("https://example.com")]).is_ok());
        for bad in [
            "https://example.org",
            "https://badexample.com",
            "https://example.com.evil.test",
        ] {
            assert!(
                matches!(
                    RelyingParty::new("example.com", "X", &[origin(bad)]),
                    Err(RelyingPartyError::OriginOutsideRpId { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            RelyingParty::new("example.com", "X", &[]).err(),
            Some(RelyingPartyError::NoOrigin)
        );
    }
}
