//! Where social login meets storage: the sign-ins and links on their way
//! through a provider, the one-time codes handed to the app, the claims that
//! keep an external identity to one account, and the provider tokens kept for
//! providers configured to keep them.
//!
//! Every table is shared by the nodes, so a flow started on one node finishes
//! on any other. Flows and codes are *taken* (deleted and returned in one
//! statement) before anything else happens: a `state` or a code works once,
//! whether what follows succeeds or not. Only digests of the `state`, of the
//! browser's binding cookie and of the code are stored, never the values.

use chrono::{DateTime, Duration, Utc};
use keyledger_storage::{with_readers, with_writer, Database, Id};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::claims::{ClaimTable, KeyedClaims};

/// SHA-256 of a random value the client holds (a `state`, a code, a binding
/// cookie): enough to find its row, useless to anyone reading the table.
pub(crate) fn digest(value: &str) -> Vec<u8> {
    Sha256::digest(value.as_bytes()).to_vec()
}

/// What a flow through a provider is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowPurpose {
    /// Sign in (or sign up) with the provider.
    SignIn,
    /// A signed-in account adds an identity of the provider.
    Link,
}

impl FlowPurpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::SignIn => "sign_in",
            Self::Link => "link",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "sign_in" => Some(Self::SignIn),
            "link" => Some(Self::Link),
            _ => None,
        }
    }
}

/// A flow on its way through a provider, as its start kept it.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthFlow {
    pub provider: String,
    pub purpose: FlowPurpose,
    /// The account a link is for.
    pub user_id: Option<Uuid>,
    /// The app's URL (on the allowlist) the browser goes back to.
    pub redirect_uri: String,
    /// The app's own `state`, handed back with the answer.
    pub app_state: Option<String>,
    pub pkce_verifier: String,
    pub nonce: Option<String>,
}

impl std::fmt::Debug for OAuthFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthFlow")
            .field("provider", &self.provider)
            .field("purpose", &self.purpose)
            .field("user_id", &self.user_id)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// A flow taken by its callback: the flow, and whether the browser that brought
/// the callback is the one that started it.
pub struct TakenFlow {
    pub flow: OAuthFlow,
    pub same_browser: bool,
}

/// What a one-time code hands over: a sign-in the provider vouched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    pub user_id: Uuid,
    pub identity_id: Uuid,
    pub provider_mfa: bool,
}

/// `oauth_flows` and `oauth_handoffs`, on either back end.
#[derive(Clone)]
pub struct OAuthFlows {
    db: Database,
}

type FlowRow = (
    String,
    String,
    Option<Id>,
    Vec<u8>,
    String,
    Option<String>,
    String,
    Option<String>,
);

impl OAuthFlows {
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone() }
    }

    /// Keeps `flow` under `state` until `expires_at`, bound to the browser
    /// holding `browser_binding`. Expired flows go at the same time.
    pub async fn put(
        &self,
        state: &str,
        browser_binding: &str,
        flow: &OAuthFlow,
        expires_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM oauth_flows WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO oauth_flows (state_digest, provider, purpose, user_id,
                    browser_digest, redirect_uri, app_state, pkce_verifier, nonce, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(digest(state))
            .bind(&flow.provider)
            .bind(flow.purpose.as_str())
            .bind(flow.user_id.map(Id))
            .bind(digest(browser_binding))
            .bind(&flow.redirect_uri)
            .bind(&flow.app_state)
            .bind(&flow.pkce_verifier)
            .bind(&flow.nonce)
            .bind(expires_at)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Takes (deletes) the live flow of `state` at `provider`: `None` when there
    /// is none (never started, already taken, expired, another provider's).
    pub async fn take(
        &self,
        provider: &str,
        state: &str,
        browser_binding: Option<&str>,
    ) -> Result<Option<TakenFlow>, sqlx::Error> {
        let now = Utc::now();
        let row: Option<FlowRow> = with_writer!(self.db, |conn| {
            sqlx::query_as(
                "DELETE FROM oauth_flows
                  WHERE state_digest = $1 AND provider = $2 AND expires_at > $3
                  RETURNING purpose, provider, user_id, browser_digest, redirect_uri,
                            app_state, pkce_verifier, nonce",
            )
            .bind(digest(state))
            .bind(provider)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?
        });
        let Some((purpose, provider, user_id, browser, redirect_uri, app_state, verifier, nonce)) =
            row
        else {
            return Ok(None);
        };
        let Some(purpose) = FlowPurpose::parse(&purpose) else {
            return Ok(None);
        };
        let same_browser = browser_binding.is_some_and(|binding| {
            subtle::ConstantTimeEq::ct_eq(digest(binding).as_slice(), browser.as_slice()).into()
        });
        Ok(Some(TakenFlow {
            flow: OAuthFlow {
                provider,
                purpose,
                user_id: user_id.map(Uuid::from),
                redirect_uri,
                app_state,
                pkce_verifier: verifier,
                nonce,
            },
            same_browser,
        }))
    }

    /// Keeps `handoff` under the one-time `code` until `expires_at`.
    pub async fn hand_off(
        &self,
        code: &str,
        provider: &str,
        handoff: Handoff,
        expires_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM oauth_handoffs WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO oauth_handoffs
                    (code_digest, user_id, identity_id, provider, provider_mfa, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(digest(code))
            .bind(Id(handoff.user_id))
            .bind(Id(handoff.identity_id))
            .bind(provider)
            .bind(handoff.provider_mfa)
            .bind(expires_at)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Takes (deletes) the live handoff of `code`: `None` when there is none.
    pub async fn take_handoff(&self, code: &str) -> Result<Option<Handoff>, sqlx::Error> {
        let now = Utc::now();
        let row: Option<(Id, Id, bool)> = with_writer!(self.db, |conn| {
            sqlx::query_as(
                "DELETE FROM oauth_handoffs WHERE code_digest = $1 AND expires_at > $2
                  RETURNING user_id, identity_id, provider_mfa",
            )
            .bind(digest(code))
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?
        });
        Ok(row.map(|(user_id, identity_id, provider_mfa)| Handoff {
            user_id: user_id.into(),
            identity_id: identity_id.into(),
            provider_mfa,
        }))
    }

    /// Drops every flow and handoff of an account (erasure).
    pub async fn forget_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM oauth_flows WHERE user_id = $1")
                .bind(Id(user_id))
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM oauth_handoffs WHERE user_id = $1")
                .bind(Id(user_id))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }
}

const IDENTITY_CLAIMS: ClaimTable = ClaimTable {
    table: "external_identity_claims",
    key: "digest",
    holder: "user_id",
    aggregate_type: "user",
};

/// A claim older than this whose account never appeared in the event log (a
/// provider's sign-up that died before its commit) may be taken over.
const STALE_AFTER: Duration = Duration::minutes(5);

/// `external_identity_claims`: an identity at a provider belongs to one
/// account. Keyed by an HMAC of (provider, subject) under a server key, so the
/// table holds no subject.
#[derive(Clone)]
pub struct IdentityClaims(KeyedClaims);

impl IdentityClaims {
    pub fn new(db: &Database, key: [u8; 32]) -> Self {
        Self(KeyedClaims::new(db, key, &IDENTITY_CLAIMS, STALE_AFTER))
    }

    fn digest(&self, provider: &str, subject: &str) -> Vec<u8> {
        self.0.digest(&[provider.as_bytes(), subject.as_bytes()])
    }

    /// The account holding `subject` at `provider`, if any.
    pub async fn holder(&self, provider: &str, subject: &str) -> Result<Option<Uuid>, sqlx::Error> {
        self.0.holder(self.digest(provider, subject)).await
    }

    /// Claims `subject` at `provider` for `user_id`: false when an account
    /// holds it already (this one included).
    pub async fn claim(
        &self,
        provider: &str,
        subject: &str,
        user_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        self.0.claim(self.digest(provider, subject), user_id).await
    }

    /// Gives a claim back (the identity was unlinked, or its link failed).
    pub async fn release(
        &self,
        provider: &str,
        subject: &str,
        user_id: Uuid,
    ) -> Result<(), sqlx::Error> {
        self.0
            .release(self.digest(provider, subject), user_id)
            .await
    }

    /// Drops every claim of an account (erasure).
    pub async fn release_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        self.0.release_holder(user_id).await
    }
}

/// `external_identity_tokens`: a provider's tokens, sealed with the person's
/// data key, for providers configured to keep them.
#[derive(Clone)]
pub struct KeptTokens {
    db: Database,
}

impl KeptTokens {
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone() }
    }

    /// Keeps (or replaces) the sealed tokens of `identity_id`.
    pub async fn keep(
        &self,
        identity_id: Uuid,
        user_id: Uuid,
        sealed: &str,
    ) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        with_writer!(self.db, |conn| {
            sqlx::query(
                "INSERT INTO external_identity_tokens (identity_id, user_id, sealed, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (identity_id) DO UPDATE
                    SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            )
            .bind(Id(identity_id))
            .bind(Id(user_id))
            .bind(sealed)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// The sealed tokens of `identity_id` of `user_id`, if kept.
    pub async fn get(
        &self,
        identity_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<String>, sqlx::Error> {
        let row: Option<(String,)> = with_readers!(self.db, |pool| {
            sqlx::query_as(
                "SELECT sealed FROM external_identity_tokens WHERE identity_id = $1 AND user_id = $2",
            )
            .bind(Id(identity_id))
            .bind(Id(user_id))
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(sealed,)| sealed))
    }

    pub async fn forget(&self, identity_id: Uuid) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM external_identity_tokens WHERE identity_id = $1")
                .bind(Id(identity_id))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Drops every kept token of an account (erasure).
    pub async fn forget_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM external_identity_tokens WHERE user_id = $1")
                .bind(Id(user_id))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use keyledger_storage::on_both_back_ends;

    use super::*;

    fn flow(provider: &str, purpose: FlowPurpose, user_id: Option<Uuid>) -> OAuthFlow {
        OAuthFlow {
            provider: provider.into(),
            purpose,
            user_id,
            redirect_uri: "https://app.example/done".into(),
            app_state: Some("app".into()),
            pkce_verifier: "verifier".into(),
            nonce: Some("nonce".into()),
        }
    }

    on_both_back_ends! {
        async fn a_flow_is_taken_once_by_its_provider_and_tells_whether_the_browser_is_the_same(db) {
            let flows = OAuthFlows::new(&db);
            let later = Utc::now() + Duration::minutes(5);
            let user = Uuid::new_v4();
            flows.put("state-1", "browser-1", &flow("google", FlowPurpose::Link, Some(user)), later)
                .await.unwrap();
            assert!(flows.take("kakao", "state-1", Some("browser-1")).await.unwrap().is_none(),
                "another provider");
            let taken = flows.take("google", "state-1", Some("browser-1")).await.unwrap().expect("live");
            assert!(taken.same_browser);
            assert_eq!(taken.flow, flow("google", FlowPurpose::Link, Some(user)));
            assert!(flows.take("google", "state-1", Some("browser-1")).await.unwrap().is_none(), "once");

            flows.put("state-2", "browser-1", &flow("google", FlowPurpose::SignIn, None), later)
                .await.unwrap();
            let taken = flows.take("google", "state-2", Some("browser-2")).await.unwrap().unwrap();
            assert!(!taken.same_browser, "another browser");
            flows.put("state-3", "browser-1", &flow("google", FlowPurpose::SignIn, None), later)
                .await.unwrap();
            assert!(!flows.take("google", "state-3", None).await.unwrap().unwrap().same_browser);

            let past = Utc::now() - Duration::seconds(1);
            flows.put("state-4", "browser-1", &flow("google", FlowPurpose::SignIn, None), past)
                .await.unwrap();
            assert!(flows.take("google", "state-4", Some("browser-1")).await.unwrap().is_none(), "expired");

            flows.put("state-5", "browser-1", &flow("google", FlowPurpose::Link, Some(user)), later)
                .await.unwrap();
            flows.forget_account(user).await.unwrap();
            assert!(flows.take("google", "state-5", Some("browser-1")).await.unwrap().is_none(), "erased");
        }
    }

    on_both_back_ends! {
        async fn a_handoff_code_works_once_and_not_after_it_expires(db) {
            let flows = OAuthFlows::new(&db);
            let handoff = Handoff {
                user_id: Uuid::new_v4(),
                identity_id: Uuid::new_v4(),
                provider_mfa: true,
            };
            flows.hand_off("code-1", "google", handoff, Utc::now() + Duration::seconds(60)).await.unwrap();
            assert_eq!(flows.take_handoff("code-1").await.unwrap(), Some(handoff));
            assert_eq!(flows.take_handoff("code-1").await.unwrap(), None);
            flows.hand_off("code-2", "google", handoff, Utc::now() - Duration::seconds(1)).await.unwrap();
            assert_eq!(flows.take_handoff("code-2").await.unwrap(), None);
        }
    }

    on_both_back_ends! {
        async fn an_external_identity_belongs_to_one_account_until_released(db) {
            let claims = IdentityClaims::new(&db, [7; 32]);
            let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
            assert!(claims.claim("google", "123", alice).await.unwrap());
            assert!(!claims.claim("google", "123", bob).await.unwrap(), "another account");
            assert!(claims.claim("kakao", "123", bob).await.unwrap(), "another provider's subject");
            assert_eq!(claims.holder("google", "123").await.unwrap(), Some(alice));
            claims.release("google", "123", bob).await.unwrap();
            assert_eq!(claims.holder("google", "123").await.unwrap(), Some(alice), "only its holder");
            claims.release_account(alice).await.unwrap();
            assert_eq!(claims.holder("google", "123").await.unwrap(), None);
        }
    }

    on_both_back_ends! {
        async fn kept_tokens_are_replaced_and_forgotten(db) {
            let kept = KeptTokens::new(&db);
            let (identity, user) = (Uuid::new_v4(), Uuid::new_v4());
            kept.keep(identity, user, "sealed-1").await.unwrap();
            kept.keep(identity, user, "sealed-2").await.unwrap();
            assert_eq!(kept.get(identity, user).await.unwrap().as_deref(), Some("sealed-2"));
            assert_eq!(kept.get(identity, Uuid::new_v4()).await.unwrap(), None, "another account's");
            kept.forget_account(user).await.unwrap();
            assert_eq!(kept.get(identity, user).await.unwrap(), None);
        }
    }
}
