//! Authorization codes of the OpenID provider (RFC 6749 §4.1, OpenID Connect
//! Core §3.1): what the user's sign-in on the hosted pages hands to an app
//! through the browser, exchanged once for tokens at the token endpoint.
//!
//! Shared by every node (a code issued on one is redeemed on any other). Only
//! the SHA-256 of a code is stored. A code is *redeemed* by one statement that
//! marks it used and returns it, so it works once however many nodes race; the
//! row stays until it expires, so that a second presentation is recognised and
//! the session the first one started is ended (RFC 6749 §4.1.2: a code used
//! twice may have been stolen, and the tokens it gave may be the thief's).

use chrono::{DateTime, Duration, Utc};
use keyledger_storage::{with_writer, Database, Id};
use uuid::Uuid;

use crate::federation::digest;

/// How long a code may wait for its exchange: long enough for a slow network,
/// short enough that a code in a log or a history is useless (RFC 6749 §4.1.2
/// recommends at most 10 minutes).
pub const CODE_LIFETIME: Duration = Duration::seconds(60);

/// What a code stands for: who signed in, how and when, for which client and
/// what the app asked for.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizationGrant {
    pub client_id: Uuid,
    pub user_id: Uuid,
    /// The redirect URI the code was sent to; the exchange must name it again.
    pub redirect_uri: String,
    /// The granted scope, space-separated.
    pub scope: String,
    pub nonce: Option<String>,
    /// The PKCE challenge (S256), when the app sent one.
    pub code_challenge: Option<String>,
    /// When the user last proved who they are (`auth_time`).
    pub auth_time: DateTime<Utc>,
    /// How (`amr`).
    pub factors: Vec<String>,
    /// The browser session the user signed in with (`sid` of the logout).
    pub browser_session_id: Uuid,
}

impl std::fmt::Debug for AuthorizationGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationGrant")
            .field("client_id", &self.client_id)
            .field("user_id", &self.user_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// What presenting a code found.
#[derive(Debug, PartialEq, Eq)]
pub enum Redemption {
    /// The first presentation of a live code.
    Granted(AuthorizationGrant),
    /// The code was redeemed before: the session it started (if the first
    /// exchange got that far) is to be ended.
    Replayed {
        client_id: Uuid,
        session_id: Option<Uuid>,
    },
    /// No such code, or it expired.
    Unknown,
}

type CodeRow = (
    Id,
    Id,
    String,
    String,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    String,
    Id,
);

/// `oidc_authorization_codes`, on either back end.
#[derive(Clone)]
pub struct AuthorizationCodes {
    db: Database,
}

impl AuthorizationCodes {
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone() }
    }

    /// Keeps `grant` under `code` for [`CODE_LIFETIME`]. Expired codes go at
    /// the same time.
    pub async fn issue(&self, code: &str, grant: &AuthorizationGrant) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM oidc_authorization_codes WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO oidc_authorization_codes (code_digest, client_id, user_id,
                    redirect_uri, scope, nonce, code_challenge, auth_time, factors,
                    browser_session_id, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(digest(code))
            .bind(Id(grant.client_id))
            .bind(Id(grant.user_id))
            .bind(&grant.redirect_uri)
            .bind(&grant.scope)
            .bind(&grant.nonce)
            .bind(&grant.code_challenge)
            .bind(grant.auth_time)
            .bind(grant.factors.join(" "))
            .bind(Id(grant.browser_session_id))
            .bind(now + CODE_LIFETIME)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Redeems `code`: the grant on its first presentation while it lives,
    /// else whether it was redeemed before.
    pub async fn redeem(&self, code: &str) -> Result<Redemption, sqlx::Error> {
        let now = Utc::now();
        let key = digest(code);
        let (granted, replayed): (Option<CodeRow>, Option<(Id, Option<Id>)>) =
            with_writer!(self.db, |conn| {
                let granted: Option<CodeRow> = sqlx::query_as(
                    "UPDATE oidc_authorization_codes SET redeemed_at = $2
                      WHERE code_digest = $1 AND redeemed_at IS NULL AND expires_at > $2
                      RETURNING client_id, user_id, redirect_uri, scope, nonce,
                                code_challenge, auth_time, factors, browser_session_id",
                )
                .bind(&key)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await?;
                let replayed = if granted.is_some() {
                    None
                } else {
                    sqlx::query_as(
                        "SELECT client_id, session_id FROM oidc_authorization_codes
                          WHERE code_digest = $1 AND redeemed_at IS NOT NULL",
                    )
                    .bind(&key)
                    .fetch_optional(&mut *conn)
                    .await?
                };
                (granted, replayed)
            });
        if let Some((
            client_id,
            user_id,
            redirect_uri,
            scope,
            nonce,
            challenge,
            auth_time,
            factors,
            browser,
        )) = granted
        {
            return Ok(Redemption::Granted(AuthorizationGrant {
                client_id: client_id.into(),
                user_id: user_id.into(),
                redirect_uri,
                scope,
                nonce,
                code_challenge: challenge,
                auth_time,
                factors: factors.split_whitespace().map(str::to_owned).collect(),
                browser_session_id: browser.into(),
            }));
        }
        Ok(match replayed {
            Some((client_id, session_id)) => Redemption::Replayed {
                client_id: client_id.into(),
                session_id: session_id.map(Uuid::from),
            },
            None => Redemption::Unknown,
        })
    }

    /// Records the session a redeemed code started, so that a replay ends it.
    pub async fn started(&self, code: &str, session_id: Uuid) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query(
                "UPDATE oidc_authorization_codes SET session_id = $2 WHERE code_digest = $1",
            )
            .bind(digest(code))
            .bind(Id(session_id))
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// Drops every code of an account (erasure).
    pub async fn forget_account(&self, user_id: Uuid) -> Result<(), sqlx::Error> {
        with_writer!(self.db, |conn| {
            sqlx::query("DELETE FROM oidc_authorization_codes WHERE user_id = $1")
                .bind(Id(user_id))
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }
}
