//! Access tokens (PASETO v4.public, or RFC 9068 JWTs for OAuth clients that ask for
//! them) and refresh tokens (opaque, stored as hashes).
//!
//! Access tokens are self-contained so other modules verify them locally with the
//! public keys from `GET /v1/auth/keys` (PASETO) or `GET /v1/oidc/jwks` (JWT); the
//! footer or header names the key (`kid`), which is how several verification keys
//! coexist during a rotation. Both formats carry the same claims and verify to the
//! same [`AccessClaims`], so every check downstream (sessions, revocation, the
//! cut-off, service accounts) is the same for both. Refresh tokens carry no
//! meaning for the client; the server keeps only their SHA-256.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use keyledger_domain::TokenHash;
use pasetors::claims::{Claims, ClaimsValidationRules};
use pasetors::footer::Footer;
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::{public, Public};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::jwt::{
    ClientGrant, JwsAlg, JwsKeyMaterial, JwtGrant, JwtKeys, VerifiedJws, ACCESS_TOKEN_TYP,
};
use crate::token_cache::{self, Verified, VerifiedTokens};

/// Lifetimes and the names tokens are issued under, from configuration.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    /// How many verified tokens to remember (by digest), so that a token checked
    /// again skips its signature check; 0 verifies every time.
    pub verified_cache_entries: usize,
}

/// How far apart the clocks of the nodes that issue and verify tokens may be. Also
/// the slack a retired key's window ends with (see `keyset` in the API crate).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token was signed by a retired key whose window has ended")]
    RetiredKey,
    #[error(
        "the token's lifetime is longer than this server issues, or it was issued in the future"
    )]
    Lifetime,
    #[error("the token's signature or claims are not valid")]
    Invalid,
    #[error("key material is not valid: {0}")]
    BadKey(String),
    #[error("token signing failed")]
    Signing,
    #[error("no {0} signing key is configured")]
    NoSigningKey(&'static str),
}

/// Who a token speaks for. Both kinds share one token format so that other
/// modules verify them the same way, and only look at `kind` when the difference
/// matters to them (a service account has no profile, no sessions, no password).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// The default, so that tokens issued before the claim existed read as what
    /// they were: user tokens.
    #[default]
    User,
    ServiceAccount,
}

impl SubjectKind {
    /// The value of the `kind` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::ServiceAccount => "service_account",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "user" => Some(Self::User),
            "service_account" => Some(Self::ServiceAccount),
            _ => None,
        }
    }
}

/// The organization a token acts in and the roles its subject holds there when it
/// was issued. Other modules authorise from these without calling back, which is
/// why scoped tokens must stay short-lived: a role change shows up at the next
/// refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessScope {
    pub organization_id: Uuid,
    /// Role labels: a built-in role's name or a custom role's id
    /// (`RoleRef::label`).
    pub roles: Vec<String>,
}

/// The claims Keyledger puts into (and trusts from) an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The subject (`sub`): a user id for [`SubjectKind::User`], a service account
    /// id for [`SubjectKind::ServiceAccount`]. Kept under this name because most
    /// callers deal with users; check `kind` before treating it as one.
    pub user_id: Uuid,
    /// The session (`sid`) whose revocation ends this token. A service account has
    /// no session: its tokens carry their own token id here, which nothing ever
    /// revokes, so they live exactly until they expire.
    pub session_id: Uuid,
    pub token_id: Uuid,
    pub issuer: String,
    pub audience: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `auth_time`: when the session behind a user's token started (its password
    /// check), kept across refreshes, so a platform-wide cut-off on session starts
    /// is one comparison. `None` for service accounts (no session) and in tokens
    /// issued before the claim existed; those are judged by `issued_at`, which is
    /// never earlier than the session's start.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// `kind`; absent in tokens issued before it existed, which were all users'.
    pub kind: SubjectKind,
    /// `org`: the organization the token is scoped to, if any.
    pub organization_id: Option<Uuid>,
    /// `roles`: the subject's role labels in `organization_id`; empty when the
    /// token is not scoped.
    pub roles: Vec<String>,
    /// `email_verified` (as in OpenID Connect): whether the user proved the
    /// address is theirs when the token was issued. `None` for service accounts
    /// and in tokens issued before the claim existed.
    pub email_verified: Option<bool>,
    /// `amr` (RFC 8176): how the user proved who they are in the session's
    /// latest authentication (`["pwd"]`, `["pwd", "otp", "mfa"]`…). Empty for
    /// service accounts and when unknown (sessions started before it was
    /// recorded, tokens issued before the claim existed).
    pub amr: Vec<String>,
    /// `client_id` (RFC 9068): the OAuth client the token was issued to; `None`
    /// for tokens of the first-party API.
    pub client_id: Option<String>,
    /// `scope` (RFC 9068): the space-separated scopes granted to that client;
    /// `None` when none were (and for first-party tokens).
    pub scope: Option<String>,
}

/// What a user's token says about its session.
#[derive(Debug, Clone, Copy)]
pub struct SessionClaims<'a> {
    pub session_id: Uuid,
    /// When the session started (`auth_time`).
    pub started_at: DateTime<Utc>,
    pub email_verified: bool,
    /// `amr`.
    pub factors: &'a [String],
}

/// A verification key as published to other modules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublicKeyInfo {
    /// PASERK id (`k4.pid.…`), the value of `kid` in token footers.
    pub kid: String,
    /// PASERK public key (`k4.public.…`).
    pub paserk: String,
    /// True for the key that signs new tokens.
    pub current: bool,
}

/// A public key that no longer signs and verifies only until `verify_until`: by then
/// every token it signed has expired, so a token it verifies later can only be a
/// forgery made with a leaked secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredPublicKey {
    /// PASERK `k4.public.…`
    pub paserk: String,
    pub verify_until: DateTime<Utc>,
}

/// A key tokens are verified with; `verify_until` is `None` for the signing key.
struct VerificationKey {
    key: AsymmetricPublicKey<V4>,
    verify_until: Option<DateTime<Utc>>,
}

/// Signs with one key, verifies with any key of the set still inside its window.
pub struct TokenIssuer {
    signing_key: AsymmetricSecretKey<V4>,
    signing_kid: String,
    footer: Footer,
    verification_keys: HashMap<String, VerificationKey>,
    /// In the order published, each with the end of its window (`None`: signing).
    published: Vec<(PublicKeyInfo, Option<DateTime<Utc>>)>,
    rules: ClaimsValidationRules,
    settings: TokenSettings,
    pub(crate) verified: VerifiedTokens,
    /// The JWS keys: EdDSA (the same Ed25519 keys as above, under the same kids),
    /// and ES256/RS256 when configured ([`TokenIssuer::with_jws_key`]).
    jwt: JwtKeys,
    /// The `iss` of JWTs: the OpenID issuer identifier (the server's public
    /// URL, RFC 9068 §2.2), known only once the server has bound its address;
    /// until it is set, `settings.issuer` as in PASETO tokens.
    jwt_issuer: std::sync::OnceLock<String>,
}

#[derive(Deserialize)]
struct KidFooter {
    kid: String,
}

impl TokenIssuer {
    /// `signing_key` is a PASERK `k4.secret.…`; `retired_public_keys` still verify
    /// tokens signed before a rotation, each until the end of its window (checked on
    /// every verification, not only when the server starts).
    pub fn new(
        signing_key: &str,
        retired_public_keys: &[RetiredPublicKey],
        settings: TokenSettings,
    ) -> Result<Self, TokenError> {
        let signing_key = AsymmetricSecretKey::<V4>::try_from(signing_key)
            .map_err(|_| TokenError::BadKey("signing key is not a k4.secret PASERK".into()))?;
        let signing_public = AsymmetricPublicKey::<V4>::try_from(&signing_key)
            .map_err(|e| TokenError::BadKey(e.to_string()))?;
        let signing_kid = paserk_id(&signing_public);
        let mut footer = Footer::new();
        footer.key_id(&Id::from(&signing_public));
        let mut jwt_retired = Vec::new();

        let mut verification_keys = HashMap::new();
        let mut published = vec![(
            PublicKeyInfo {
                kid: signing_kid.clone(),
                paserk: paserk(&signing_public),
                current: true,
            },
            None,
        )];
        verification_keys.insert(
            signing_kid.clone(),
            VerificationKey {
                key: signing_public,
                verify_until: None,
            },
        );
        for retired in retired_public_keys {
            let key = AsymmetricPublicKey::<V4>::try_from(retired.paserk.trim()).map_err(|_| {
                TokenError::BadKey("a verification key is not a k4.public PASERK".into())
            })?;
            let kid = paserk_id(&key);
            if verification_keys.contains_key(&kid) {
                continue;
            }
            jwt_retired.push((key.as_bytes().to_vec(), kid.clone(), retired.verify_until));
            published.push((
                PublicKeyInfo {
                    kid: kid.clone(),
                    paserk: paserk(&key),
                    current: false,
                },
                Some(retired.verify_until),
            ));
            verification_keys.insert(
                kid,
                VerificationKey {
                    key,
                    verify_until: Some(retired.verify_until),
                },
            );
        }

        let mut rules = ClaimsValidationRules::new();
        // `iat` and `nbf` are checked in `verify_at`, with the clock skew pasetors
        // does not allow for (`exp` is still checked here, without slack).
        rules.disable_valid_at();
        rules.validate_issuer_with(&settings.issuer);
        rules.validate_audience_with(&settings.audience);
        let jwt = JwtKeys::eddsa(signing_key.as_bytes(), &signing_kid, &jwt_retired)?;
        Ok(Self {
            jwt,
            jwt_issuer: std::sync::OnceLock::new(),
            signing_key,
            signing_kid,
            footer,
            verification_keys,
            published,
            rules,
            verified: VerifiedTokens::new(settings.verified_cache_entries),
            settings,
        })
    }

    /// A fresh key pair as PASERK strings `(secret, public)`, for key files and tests.
    pub fn generate_key() -> Result<(String, String), TokenError> {
        let pair = AsymmetricKeyPair::<V4>::generate().map_err(|_| TokenError::Signing)?;
        let mut secret = String::new();
        pair.secret
            .fmt(&mut secret)
            .map_err(|_| TokenError::Signing)?;
        Ok((secret, paserk(&pair.public)))
    }

    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// Adds the ES256 or RS256 key (PKCS#8 PEM) that signs JWTs of `alg`, and the
    /// retired public keys of that algorithm still inside their window. EdDSA needs
    /// none: it signs with the PASETO key.
    pub fn with_jws_key(mut self, alg: JwsAlg, key: &JwsKeyMaterial) -> Result<Self, TokenError> {
        self.jwt.add(alg, key)?;
        Ok(self)
    }

    /// The JWS keys, for signing ID tokens and publishing the JWKS.
    /// Sets the `iss` of JWTs (the OpenID issuer identifier); the first call
    /// wins, as a server has one address.
    pub fn set_jwt_issuer(&self, issuer: &str) {
        let _ = self.jwt_issuer.set(issuer.to_owned());
    }

    /// The `iss` JWTs carry and must carry.
    pub fn jwt_issuer(&self) -> &str {
        self.jwt_issuer
            .get()
            .map_or(self.settings.issuer.as_str(), String::as_str)
    }

    pub fn jwt_keys(&self) -> &JwtKeys {
        &self.jwt
    }

    /// The signing key and the retired keys whose window has not ended yet.
    pub fn public_keys(&self) -> Vec<PublicKeyInfo> {
        let now = Utc::now();
        self.published
            .iter()
            .filter(|(_, until)| until.is_none_or(|until| now < until))
            .map(|(info, _)| info.clone())
            .collect()
    }

    pub fn access_ttl(&self) -> Duration {
        self.settings.access_ttl
    }

    /// Signs an access token for a user's session that started at
    /// `session_started_at`, scoped to an organization when `scope` is given.
    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        session_started_at: DateTime<Utc>,
        scope: Option<&AccessScope>,
        email_verified: bool,
    ) -> Result<(String, AccessClaims), TokenError> {
        let session = SessionClaims {
            session_id,
            started_at: session_started_at,
            email_verified,
            factors: &[],
        };
        self.issue_for_session(user_id, session, scope)
    }

    /// Signs an access token for a user's session, with its `amr`.
    pub fn issue_for_session(
        &self,
        user_id: Uuid,
        session: SessionClaims<'_>,
        scope: Option<&AccessScope>,
    ) -> Result<(String, AccessClaims), TokenError> {
        self.sign(SubjectKind::User, user_id, Some(session), scope, None, None)
    }

    /// Signs a PASETO access token for a user's session issued to an OAuth client
    /// (an access-token format of `paseto`): the token of
    /// [`Self::issue_for_session`] plus the `client_id` and `scope` claims.
    pub fn issue_for_client(
        &self,
        user_id: Uuid,
        session: SessionClaims<'_>,
        scope: Option<&AccessScope>,
        client: &ClientGrant<'_>,
    ) -> Result<(String, AccessClaims), TokenError> {
        self.sign(
            SubjectKind::User,
            user_id,
            Some(session),
            scope,
            None,
            Some(client),
        )
    }

    /// An RFC 9068 access token (typ "at+jwt") for a user's session, issued to
    /// `client_id` with `scope`; carries the same private claims as the PASETO token
    /// (sid, kind, email_verified, amr, org, roles) so `verify` maps it to the same
    /// AccessClaims.
    pub fn issue_jwt_for_session(
        &self,
        user_id: Uuid,
        session: SessionClaims<'_>,
        scope: Option<&AccessScope>,
        grant: &JwtGrant<'_>,
    ) -> Result<(String, AccessClaims), TokenError> {
        self.sign_jwt(
            SubjectKind::User,
            user_id,
            Some(session),
            scope,
            None,
            grant,
        )
    }

    /// [`Self::issue_for_service_account`] as an RFC 9068 JWT (the
    /// client-credentials grant of a client whose tokens are JWTs).
    pub fn issue_jwt_for_service_account(
        &self,
        service_account_id: Uuid,
        scope: &AccessScope,
        not_before: Option<DateTime<Utc>>,
        grant: &JwtGrant<'_>,
    ) -> Result<(String, AccessClaims), TokenError> {
        self.sign_jwt(
            SubjectKind::ServiceAccount,
            service_account_id,
            None,
            Some(scope),
            not_before,
            grant,
        )
    }

    /// Signs an access token for a service account (the client-credentials grant).
    /// There is no session behind it, so the token's own id stands in as the
    /// session id: revocation checks keyed by session find nothing, and the token
    /// runs until it expires, the account is deleted or its secret rotated. It is
    /// dated no earlier than `not_before` (whole seconds), so that it is told
    /// apart from tokens issued before the last rotation.
    pub fn issue_for_service_account(
        &self,
        service_account_id: Uuid,
        scope: &AccessScope,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<(String, AccessClaims), TokenError> {
        self.sign(
            SubjectKind::ServiceAccount,
            service_account_id,
            None,
            Some(scope),
            not_before,
            None,
        )
    }

    fn sign(
        &self,
        kind: SubjectKind,
        subject: Uuid,
        session: Option<SessionClaims<'_>>,
        scope: Option<&AccessScope>,
        not_before: Option<DateTime<Utc>>,
        client: Option<&ClientGrant<'_>>,
    ) -> Result<(String, AccessClaims), TokenError> {
        let mut claims =
            Claims::new_expires_in(&self.settings.access_ttl).map_err(|_| TokenError::Signing)?;
        if let Some(start) = not_before.filter(|start| *start > Utc::now()) {
            let ttl = chrono::Duration::from_std(self.settings.access_ttl)
                .map_err(|_| TokenError::Signing)?;
            let format = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            claims
                .issued_at(&format(start))
                .and_then(|()| claims.not_before(&format(start)))
                .and_then(|()| claims.expiration(&format(start + ttl)))
                .map_err(|_| TokenError::Signing)?;
        }
        let token_id = Uuid::new_v4();
        let session_id = session.map_or(token_id, |s| s.session_id);
        claims
            .issuer(&self.settings.issuer)
            .and_then(|()| claims.subject(&subject.to_string()))
            .and_then(|()| claims.audience(&self.settings.audience))
            .and_then(|()| claims.token_identifier(&token_id.to_string()))
            .and_then(|()| claims.add_additional("sid", session_id.to_string()))
            .and_then(|()| claims.add_additional("kind", kind.as_str()))
            .map_err(|_| TokenError::Signing)?;
        if let Some(session) = session {
            // Microseconds: a cut-off and a session started in the same second
            // must still compare the right way round.
            let started_at = session
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            claims
                .add_additional("auth_time", started_at)
                .and_then(|()| claims.add_additional("email_verified", session.email_verified))
                .map_err(|_| TokenError::Signing)?;
            if !session.factors.is_empty() {
                let amr: Vec<Value> = session.factors.iter().cloned().map(Value::String).collect();
                claims
                    .add_additional("amr", Value::Array(amr))
                    .map_err(|_| TokenError::Signing)?;
            }
        }
        if let Some(scope) = scope {
            let roles: Vec<Value> = scope.roles.iter().cloned().map(Value::String).collect();
            claims
                .add_additional("org", scope.organization_id.to_string())
                .and_then(|()| claims.add_additional("roles", Value::Array(roles)))
                .map_err(|_| TokenError::Signing)?;
        }
        if let Some(client) = client {
            claims
                .add_additional("client_id", client.client_id)
                .map_err(|_| TokenError::Signing)?;
            if !client.scope.is_empty() {
                claims
                    .add_additional("scope", client.scope)
                    .map_err(|_| TokenError::Signing)?;
            }
        }
        let token = public::sign(&self.signing_key, &claims, Some(&self.footer), None)
            .map_err(|_| TokenError::Signing)?;
        let parsed = parse_claims(&claims).ok_or(TokenError::Signing)?;
        Ok((token, parsed))
    }

    /// The JWT twin of [`Self::sign`]: the same claims, times as NumericDate
    /// (whole seconds), signed with `grant.alg`.
    ///
    /// `auth_time` is whole seconds, as OpenID Connect defines it, and the
    /// private claim `auth_time_us` carries the session's start to the
    /// microsecond, as the PASETO token's `auth_time` does. The platform's
    /// cut-off on session starts compares microseconds (`started < cutoff`):
    /// judged by whole seconds, a session started in the same second but after a
    /// cut-off would read as started before it, and every token of it would be
    /// refused although its refresh (judged by the stored start) succeeds. Rounding
    /// up instead would let a session started just before the cut-off through.
    fn sign_jwt(
        &self,
        kind: SubjectKind,
        subject: Uuid,
        session: Option<SessionClaims<'_>>,
        scope: Option<&AccessScope>,
        not_before: Option<DateTime<Utc>>,
        grant: &JwtGrant<'_>,
    ) -> Result<(String, AccessClaims), TokenError> {
        let ttl =
            i64::try_from(self.settings.access_ttl.as_secs()).map_err(|_| TokenError::Signing)?;
        let now = Utc::now().timestamp();
        // Dated no earlier than `not_before` (whole seconds), as `sign` does.
        let issued_at = not_before.map_or(now, |start| start.timestamp().max(now));
        let token_id = Uuid::new_v4();
        let session_id = session.map_or(token_id, |s| s.session_id);
        let mut claims = serde_json::json!({
            "iss": self.jwt_issuer(),
            "sub": subject.to_string(),
            "aud": self.settings.audience,
            "exp": issued_at + ttl,
            "iat": issued_at,
            "nbf": issued_at,
            "jti": token_id.to_string(),
            "client_id": grant.client_id,
            "sid": session_id.to_string(),
            "kind": kind.as_str(),
        });
        if !grant.scope.is_empty() {
            claims["scope"] = Value::from(grant.scope);
        }
        if let Some(session) = session {
            claims["auth_time"] = Value::from(session.started_at.timestamp());
            claims["auth_time_us"] = Value::from(session.started_at.timestamp_micros());
            claims["email_verified"] = Value::from(session.email_verified);
            if !session.factors.is_empty() {
                claims["amr"] = Value::from(session.factors.to_vec());
            }
        }
        if let Some(scope) = scope {
            claims["org"] = Value::from(scope.organization_id.to_string());
            claims["roles"] = Value::from(scope.roles.clone());
        }
        let token = self.jwt.sign(grant.alg, ACCESS_TOKEN_TYP, &claims)?;
        let Value::Object(map) = claims else {
            return Err(TokenError::Signing);
        };
        let parsed = parse_jwt_claims(&map).ok_or(TokenError::Signing)?;
        Ok((token, parsed))
    }

    /// Checks key, signature, issuer, audience and lifetime. Whether the session is
    /// still alive is not a property of the token: callers check that separately.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        self.verify_at(token, Utc::now())
    }

    /// [`Self::verify`] as of `now`.
    ///
    /// Besides the signature: the key must still be inside its window (a retired
    /// key verifies only as long as tokens it signed can be alive); the token must
    /// not claim to be issued or valid later than `now` plus [`CLOCK_SKEW`]; and it
    /// must not live longer than this server's access-token lifetime plus the skew,
    /// so a token minted with a leaked key and a far `exp` is refused even while
    /// that key is still trusted.
    ///
    /// A token verified before is answered from [`VerifiedTokens`] (by its
    /// digest) after the two checks whose outcome can change with time: its
    /// expiry and its key's window. The rest (signature, issuer, audience,
    /// issue time, lifetime) cannot change for the same token.
    pub(crate) fn verify_at(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<AccessClaims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Malformed);
        }
        let digest = token_cache::digest(token);
        if let Some(known) = self.verified.get(&digest, now) {
            // PASETO and EdDSA JWTs share their keys' ids; ES256 and RS256 keys
            // are only in the JWS set.
            let until = match self.verification_keys.get(&known.kid) {
                Some(key) => key.verify_until,
                None => self.jwt.window(&known.kid).ok_or(TokenError::UnknownKey)?,
            };
            if until.is_some_and(|until| now >= until) {
                return Err(TokenError::RetiredKey);
            }
            return Ok(known.claims);
        }
        if token.starts_with("v4.public.") {
            self.verify_signed(token, digest, now)
        } else {
            self.verify_jwt(token, digest, now)
        }
    }

    /// [`Self::verify_signed`] for an RFC 9068 JWT: `typ` must be `at+jwt` (an ID
    /// token, signed with the same keys, is never an access token), then the same
    /// checks of issuer, audience, expiry, issue time and lifetime.
    fn verify_jwt(
        &self,
        token: &str,
        digest: token_cache::TokenDigest,
        now: DateTime<Utc>,
    ) -> Result<AccessClaims, TokenError> {
        let VerifiedJws { kid, claims, .. } = self.jwt.verify(token, &[ACCESS_TOKEN_TYP], now)?;
        let parsed = parse_jwt_claims(&claims).ok_or(TokenError::Invalid)?;
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.settings.audience,
            _ => false,
        };
        if parsed.issuer != self.jwt_issuer() || !audience_ok {
            return Err(TokenError::Invalid);
        }
        let not_before = match claims.get("nbf") {
            None => parsed.issued_at,
            Some(value) => numeric_date(value).ok_or(TokenError::Invalid)?,
        };
        self.check_times(&parsed, not_before, now)?;
        self.verified.insert(
            digest,
            Verified {
                claims: parsed.clone(),
                kid,
            },
            now,
        );
        Ok(parsed)
    }

    /// Expiry, issue time and lifetime, with [`CLOCK_SKEW`], for both formats.
    fn check_times(
        &self,
        claims: &AccessClaims,
        not_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), TokenError> {
        let skew = chrono::Duration::from_std(CLOCK_SKEW).map_err(|_| TokenError::Lifetime)?;
        let longest = chrono::Duration::from_std(self.settings.access_ttl)
            .map_err(|_| TokenError::Lifetime)?
            + skew;
        let lifetime = claims.expires_at - claims.issued_at;
        if claims.expires_at <= now {
            return Err(TokenError::Invalid);
        }
        if claims.issued_at > now + skew
            || not_before > now + skew
            || lifetime > longest
            || lifetime <= chrono::Duration::zero()
        {
            return Err(TokenError::Lifetime);
        }
        Ok(())
    }

    /// The whole check of a token not seen before; remembers it (by `digest`)
    /// once it passes.
    fn verify_signed(
        &self,
        token: &str,
        digest: token_cache::TokenDigest,
        now: DateTime<Utc>,
    ) -> Result<AccessClaims, TokenError> {
        let untrusted =
            UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
        // The footer is authenticated by the signature; here it only picks the key.
        // Decoding it with serde instead of `Footer::parse_bytes` avoids compiling a
        // regex on every request.
        let footer: KidFooter = serde_json::from_slice(untrusted.untrusted_footer())
            .map_err(|_| TokenError::Malformed)?;
        let key = self
            .verification_keys
            .get(&footer.kid)
            .ok_or(TokenError::UnknownKey)?;
        if key.verify_until.is_some_and(|until| now >= until) {
            return Err(TokenError::RetiredKey);
        }
        let trusted = public::verify(&key.key, &untrusted, &self.rules, None, None)
            .map_err(|_| TokenError::Invalid)?;
        let payload = trusted.payload_claims().ok_or(TokenError::Invalid)?;
        let claims = parse_claims(payload).ok_or(TokenError::Invalid)?;
        let not_before = claim_time(payload, "nbf").ok_or(TokenError::Invalid)?;
        // pasetors checks `exp` against the system clock; this check makes `now`
        // decide, as it does for a remembered token.
        self.check_times(&claims, not_before, now)?;
        self.verified.insert(
            digest,
            Verified {
                claims: claims.clone(),
                kid: footer.kid,
            },
            now,
        );
        Ok(claims)
    }
}

fn paserk<K: FormatAsPaserk>(key: &K) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = key.fmt(&mut out);
    out
}

fn paserk_id(key: &AsymmetricPublicKey<V4>) -> String {
    paserk(&Id::from(key))
}

/// A time claim (RFC 3339, as PASETO writes them).
fn claim_time(claims: &Claims, name: &str) -> Option<DateTime<Utc>> {
    claims
        .get_claim(name)
        .and_then(|v| v.as_str())
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn parse_claims(claims: &Claims) -> Option<AccessClaims> {
    let time = |name: &str| claim_time(claims, name);
    parse_access_claims(
        |name| claims.get_claim(name),
        time("iat")?,
        time("exp")?,
        match claims.get_claim("auth_time") {
            None => None,
            Some(_) => Some(time("auth_time")?),
        },
    )
}

/// A NumericDate (RFC 7519: seconds since the epoch); Keyledger writes integers.
fn numeric_date(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(value.as_i64()?, 0)
}

/// The claims of a JWT access token: times are NumericDates, and `auth_time_us`
/// (when present) gives `auth_time` its microseconds (see `sign_jwt`); it must
/// fall within the second `auth_time` names.
fn parse_jwt_claims(claims: &Map<String, Value>) -> Option<AccessClaims> {
    let authenticated_at = match (claims.get("auth_time"), claims.get("auth_time_us")) {
        (None, None) => None,
        (Some(seconds), None) => Some(numeric_date(seconds)?),
        (Some(seconds), Some(micros)) => {
            let precise = DateTime::from_timestamp_micros(micros.as_i64()?)?;
            (precise.timestamp() == seconds.as_i64()?).then_some(precise)?;
            Some(precise)
        }
        (None, Some(_)) => return None,
    };
    // `client_id` is required by RFC 9068.
    claims.get("client_id")?.as_str()?;
    parse_access_claims(
        |name| claims.get(name),
        numeric_date(claims.get("iat")?)?,
        numeric_date(claims.get("exp")?)?,
        authenticated_at,
    )
}

/// The claims both formats write alike.
fn parse_access_claims<'a>(
    claim: impl Fn(&str) -> Option<&'a Value>,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    authenticated_at: Option<DateTime<Utc>>,
) -> Option<AccessClaims> {
    let text = |name: &str| claim(name).and_then(|v| v.as_str());
    let optional_text = |name: &str| match claim(name) {
        None => Some(None),
        Some(value) => value.as_str().map(|v| Some(v.to_owned())),
    };
    let kind = match claim("kind") {
        None => SubjectKind::User,
        Some(value) => SubjectKind::parse(value.as_str()?)?,
    };
    let organization_id = match claim("org") {
        None => None,
        Some(value) => Some(value.as_str()?.parse().ok()?),
    };
    let strings = |name: &str| match claim(name) {
        None => Some(Vec::new()),
        Some(value) => value
            .as_array()?
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>(),
    };
    let roles = strings("roles")?;
    // Roles only mean something inside an organization.
    if organization_id.is_none() && !roles.is_empty() {
        return None;
    }
    Some(AccessClaims {
        kind,
        organization_id,
        roles,
        user_id: text("sub")?.parse().ok()?,
        session_id: text("sid")?.parse().ok()?,
        token_id: text("jti")?.parse().ok()?,
        issuer: text("iss")?.to_owned(),
        audience: text("aud")?.to_owned(),
        issued_at,
        expires_at,
        authenticated_at,
        email_verified: match claim("email_verified") {
            None => None,
            Some(value) => Some(value.as_bool()?),
        },
        amr: strings("amr")?,
        client_id: optional_text("client_id")?,
        scope: optional_text("scope")?,
    })
}

/// An opaque refresh token: `klr_` + base64url(session id ‖ generation ‖ 256 random
/// bits).
///
/// The session id lets the server find the token's family without an index of
/// token hashes, and the generation (how many rotations preceded it) lets it check
/// the token with one comparison; the random part is what makes it unguessable.
/// The server stores only [`RefreshToken::hash`].
pub struct RefreshToken {
    value: String,
    session_id: Uuid,
    generation: u32,
}

impl RefreshToken {
    const PREFIX: &'static str = "klr_";
    const RAW_LEN: usize = 16 + 4 + 32;

    pub fn generate(session_id: Uuid, generation: u32) -> Self {
        let mut raw = [0u8; Self::RAW_LEN];
        raw[..16].copy_from_slice(session_id.as_bytes());
        raw[16..20].copy_from_slice(&generation.to_be_bytes());
        getrandom::fill(&mut raw[20..]).expect("the operating system's random source failed");
        Self {
            value: format!("{}{}", Self::PREFIX, URL_SAFE_NO_PAD.encode(raw)),
            session_id,
            generation,
        }
    }

    pub fn parse(value: &str) -> Result<Self, TokenError> {
        let encoded = value
            .strip_prefix(Self::PREFIX)
            .ok_or(TokenError::Malformed)?;
        // 52 bytes are 70 base64url characters without padding.
        if encoded.len() != 70 {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() != Self::RAW_LEN {
            return Err(TokenError::Malformed);
        }
        let session_id = Uuid::from_slice(&raw[..16]).map_err(|_| TokenError::Malformed)?;
        let generation = u32::from_be_bytes([raw[16], raw[17], raw[18], raw[19]]);
        Ok(Self {
            value: value.to_owned(),
            session_id,
            generation,
        })
    }

    pub fn session_id(&self) -> Uuid {
        self.session_id
    }

    /// How many rotations preceded this token in its session (0 at login).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::from_bytes(Sha256::digest(self.value.as_bytes()).into())
    }

    /// The token itself, to hand to the client once.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefreshToken(session {}, <redacted>)", self.session_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: "https://keyledger.test".into(),
            audience: "platform".into(),
            access_ttl: Duration::from_secs(900),
            verified_cache_entries: 1000,
        }
    }

    fn issuer() -> TokenIssuer {
        let (secret, _) = TokenIssuer::generate_key().unwrap();
        TokenIssuer::new(&secret, &[], settings()).unwrap()
    }

    #[test]
    fn issued_tokens_verify_with_all_claims() {
        let issuer = issuer();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, claims) = issuer.issue(user, session, Utc::now(), None, true).unwrap();
        assert!(token.starts_with("v4.public."));
        let verified = issuer.verify(&token).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.user_id, user);
        assert_eq!(verified.session_id, session);
        assert_eq!(verified.issuer, "https://keyledger.test");
        assert_eq!(verified.audience, "platform");
        assert_eq!(verified.email_verified, Some(true));
        let lifetime = verified.expires_at - verified.issued_at;
        assert_eq!(lifetime.num_seconds(), 900);
    }

    #[test]
    fn a_user_token_carries_its_sessions_start_to_the_microsecond() {
        let issuer = issuer();
        let started_at = Utc::now() - chrono::Duration::days(3);
        let (token, _) = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), started_at, None, false)
            .unwrap();
        let verified = issuer.verify(&token).unwrap();
        assert_eq!(
            verified.authenticated_at.map(|t| t.timestamp_micros()),
            Some(started_at.timestamp_micros())
        );
        let scope = AccessScope {
            organization_id: Uuid::new_v4(),
            roles: vec![],
        };
        let (token, _) = issuer
            .issue_for_service_account(Uuid::new_v4(), &scope, None)
            .unwrap();
        assert_eq!(issuer.verify(&token).unwrap().authenticated_at, None);
    }

    #[test]
    fn the_footer_names_the_signing_key() {
        let issuer = issuer();
        let (token, _) = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        let footer = token.rsplit('.').next().unwrap();
        let footer = String::from_utf8(URL_SAFE_NO_PAD.decode(footer).unwrap()).unwrap();
        assert!(footer.contains(issuer.signing_kid()));
        assert!(issuer.signing_kid().starts_with("k4.pid."));
    }

    #[test]
    fn a_token_from_another_key_is_refused() {
        let (token, _) = issuer()
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        assert!(matches!(
            issuer().verify(&token),
            Err(TokenError::UnknownKey)
        ));
    }

    #[test]
    fn a_retired_key_still_verifies_after_rotation() {
        let (old_secret, old_public) = TokenIssuer::generate_key().unwrap();
        let old = TokenIssuer::new(&old_secret, &[], settings()).unwrap();
        let (token, _) = old
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        let (new_secret, _) = TokenIssuer::generate_key().unwrap();
        let retired = RetiredPublicKey {
            paserk: old_public,
            verify_until: Utc::now() + chrono::Duration::minutes(16),
        };
        let rotated = TokenIssuer::new(&new_secret, &[retired], settings()).unwrap();
        assert!(rotated.verify(&token).is_ok());
        assert_eq!(rotated.public_keys().len(), 2);
        assert_eq!(
            rotated.public_keys().iter().filter(|k| k.current).count(),
            1
        );
    }

    #[test]
    fn a_retired_key_stops_verifying_at_the_end_of_its_window_without_a_restart() {
        let (old_secret, old_public) = TokenIssuer::generate_key().unwrap();
        let old = TokenIssuer::new(&old_secret, &[], settings()).unwrap();
        let (token, _) = old
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        let (new_secret, _) = TokenIssuer::generate_key().unwrap();
        let end = Utc::now() + chrono::Duration::minutes(5);
        let retired = RetiredPublicKey {
            paserk: old_public,
            verify_until: end,
        };
        let rotated = TokenIssuer::new(&new_secret, &[retired], settings()).unwrap();
        assert!(rotated
            .verify_at(&token, end - chrono::Duration::seconds(1))
            .is_ok());
        assert!(matches!(
            rotated.verify_at(&token, end),
            Err(TokenError::RetiredKey)
        ));
        // The signing key has no end.
        let (fresh, _) = rotated
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        assert!(rotated.verify_at(&fresh, end).is_ok());
    }

    #[test]
    fn a_token_verified_before_is_answered_from_memory_until_it_expires() {
        let issuer = issuer();
        let (token, claims) = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        let now = Utc::now();
        assert_eq!(issuer.verify_at(&token, now).unwrap(), claims);
        assert_eq!(issuer.verified.len(), 1, "remembered by its digest");
        assert_eq!(issuer.verify_at(&token, now).unwrap(), claims);
        assert_eq!(issuer.verified.len(), 1);
        // Past its expiry the remembered token is refused, as a fresh check
        // refuses it.
        let later = claims.expires_at + chrono::Duration::seconds(1);
        assert!(matches!(
            issuer.verify_at(&token, later),
            Err(TokenError::Invalid)
        ));
        assert_eq!(issuer.verified.len(), 0);
        assert!(matches!(
            issuer.verify_at(&token, later),
            Err(TokenError::Invalid)
        ));
        // Another token is checked on its own, and a bad one never remembered.
        let mut forged = token.clone().into_bytes();
        let at = forged.len() / 2;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(issuer.verify_at(&forged, now).is_err());
        assert!(issuer.verify_at(&forged, now).is_err());
        assert_eq!(issuer.verified.len(), 0);
    }

    #[test]
    fn without_a_cache_every_check_verifies_the_signature() {
        let (secret, _) = TokenIssuer::generate_key().unwrap();
        let settings = TokenSettings {
            verified_cache_entries: 0,
            ..settings()
        };
        let issuer = TokenIssuer::new(&secret, &[], settings).unwrap();
        let (token, claims) = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        assert_eq!(issuer.verify(&token).unwrap(), claims);
        assert_eq!(issuer.verify(&token).unwrap(), claims);
        assert_eq!(issuer.verified.len(), 0);
    }

    #[test]
    fn a_key_whose_window_has_ended_is_no_longer_published() {
        let (_, old_public) = TokenIssuer::generate_key().unwrap();
        let (secret, _) = TokenIssuer::generate_key().unwrap();
        let retired = RetiredPublicKey {
            paserk: old_public,
            verify_until: Utc::now() - chrono::Duration::seconds(1),
        };
        let issuer = TokenIssuer::new(&secret, &[retired], settings()).unwrap();
        let published = issuer.public_keys();
        assert_eq!(published.len(), 1);
        assert!(published[0].current);
    }

    /// Signs claims with the issuer's key and the given times.
    fn sign_with_times(
        issuer: &TokenIssuer,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> String {
        let mut claims = Claims::new().unwrap();
        claims.issuer("https://keyledger.test").unwrap();
        claims.subject(&Uuid::new_v4().to_string()).unwrap();
        claims.audience("platform").unwrap();
        claims
            .token_identifier(&Uuid::new_v4().to_string())
            .unwrap();
        claims
            .add_additional("sid", Uuid::new_v4().to_string())
            .unwrap();
        claims.issued_at(&issued_at.to_rfc3339()).unwrap();
        claims.not_before(&issued_at.to_rfc3339()).unwrap();
        claims.expiration(&expires_at.to_rfc3339()).unwrap();
        public::sign(&issuer.signing_key, &claims, Some(&issuer.footer), None).unwrap()
    }

    #[test]
    fn a_token_living_longer_than_the_configured_lifetime_is_refused() {
        let issuer = issuer();
        let now = Utc::now();
        let minutes = chrono::Duration::minutes;
        // 15 minutes (the setting) plus less than the skew: accepted.
        let fine = sign_with_times(
            &issuer,
            now,
            now + minutes(15) + chrono::Duration::seconds(30),
        );
        assert!(issuer.verify(&fine).is_ok());
        // A year: refused although the signature is good.
        let forever = sign_with_times(&issuer, now, now + chrono::Duration::days(365));
        assert!(matches!(issuer.verify(&forever), Err(TokenError::Lifetime)));
        // Just past lifetime + skew.
        let long = sign_with_times(&issuer, now, now + minutes(17));
        assert!(matches!(issuer.verify(&long), Err(TokenError::Lifetime)));
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused_beyond_the_clock_skew() {
        let issuer = issuer();
        let now = Utc::now();
        let minutes = chrono::Duration::minutes;
        // Another node's clock a little ahead: accepted.
        let ahead = now + chrono::Duration::seconds(20);
        let slightly = sign_with_times(&issuer, ahead, ahead + minutes(15));
        assert!(issuer.verify(&slightly).is_ok());
        // Ten minutes ahead: refused.
        let later = now + minutes(10);
        let future = sign_with_times(&issuer, later, later + minutes(5));
        assert!(matches!(issuer.verify(&future), Err(TokenError::Lifetime)));
    }

    #[test]
    fn tampered_and_malformed_tokens_are_refused() {
        let issuer = issuer();
        let (token, _) = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        let mut tampered = token.clone().into_bytes();
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(issuer.verify(&tampered).is_err());
        for bad in [
            "",
            "v4.public.",
            "garbage",
            "v4.local.abc.def",
            &"a".repeat(5000),
        ] {
            assert!(issuer.verify(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_for_another_audience_is_refused() {
        let (secret, _) = TokenIssuer::generate_key().unwrap();
        let a = TokenIssuer::new(&secret, &[], settings()).unwrap();
        let b = TokenIssuer::new(
            &secret,
            &[],
            TokenSettings {
                audience: "other".into(),
                ..settings()
            },
        )
        .unwrap();
        let (token, _) = a
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        assert!(matches!(b.verify(&token), Err(TokenError::Invalid)));
    }

    fn scope() -> AccessScope {
        AccessScope {
            organization_id: Uuid::new_v4(),
            roles: vec!["admin".into(), Uuid::new_v4().to_string()],
        }
    }

    #[test]
    fn unscoped_user_tokens_say_so() {
        let issuer = issuer();
        let (token, _) = issuer
            .issue(Uuid::new_v4(), Uuid::new_v4(), Utc::now(), None, false)
            .unwrap();
        let verified = issuer.verify(&token).unwrap();
        assert_eq!(verified.kind, SubjectKind::User);
        assert_eq!(verified.organization_id, None);
        assert!(verified.roles.is_empty());
    }

    #[test]
    fn scoped_claims_round_trip() {
        let issuer = issuer();
        let scope = scope();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, claims) = issuer
            .issue(user, session, Utc::now(), Some(&scope), false)
            .unwrap();
        let verified = issuer.verify(&token).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.kind, SubjectKind::User);
        assert_eq!(verified.user_id, user);
        assert_eq!(verified.session_id, session);
        assert_eq!(verified.organization_id, Some(scope.organization_id));
        assert_eq!(verified.roles, scope.roles);
    }

    #[test]
    fn service_account_tokens_round_trip_with_their_kind() {
        let issuer = issuer();
        let scope = scope();
        let account = Uuid::new_v4();
        let (token, claims) = issuer
            .issue_for_service_account(account, &scope, None)
            .unwrap();
        let verified = issuer.verify(&token).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.kind, SubjectKind::ServiceAccount);
        assert_eq!(verified.user_id, account);
        // No session: the token's own id stands in.
        assert_eq!(verified.session_id, verified.token_id);
        assert_eq!(verified.organization_id, Some(scope.organization_id));
        assert_eq!(verified.roles, scope.roles);
    }

    /// Signs claims by hand with the issuer's key, as an older version would have.
    fn sign_raw(issuer: &TokenIssuer, extra: &[(&str, Value)]) -> String {
        let mut claims = Claims::new_expires_in(&Duration::from_secs(900)).unwrap();
        claims.issuer("https://keyledger.test").unwrap();
        claims.subject(&Uuid::new_v4().to_string()).unwrap();
        claims.audience("platform").unwrap();
        claims
            .token_identifier(&Uuid::new_v4().to_string())
            .unwrap();
        claims
            .add_additional("sid", Uuid::new_v4().to_string())
            .unwrap();
        for (name, value) in extra {
            claims.add_additional(name, value.clone()).unwrap();
        }
        public::sign(&issuer.signing_key, &claims, Some(&issuer.footer), None).unwrap()
    }

    #[test]
    fn a_token_from_before_scopes_still_verifies_as_a_user_token() {
        let issuer = issuer();
        let verified = issuer.verify(&sign_raw(&issuer, &[])).unwrap();
        assert_eq!(verified.kind, SubjectKind::User);
        assert_eq!(verified.organization_id, None);
        assert!(verified.roles.is_empty());
    }

    #[test]
    fn malformed_scope_claims_are_refused() {
        let issuer = issuer();
        for extra in [
            vec![("kind", Value::from("robot"))],
            vec![("org", Value::from("not-a-uuid"))],
            vec![
                ("org", Value::from(Uuid::new_v4().to_string())),
                ("roles", Value::from("admin")),
            ],
            vec![("roles", serde_json::json!(["admin"]))],
        ] {
            let token = sign_raw(&issuer, &extra);
            assert!(
                matches!(issuer.verify(&token), Err(TokenError::Invalid)),
                "{extra:?}"
            );
        }
    }

    #[test]
    fn refresh_tokens_round_trip_and_hash_stably() {
        let session = Uuid::new_v4();
        let token = RefreshToken::generate(session, 7);
        let parsed = RefreshToken::parse(token.expose()).unwrap();
        assert_eq!(parsed.session_id(), session);
        assert_eq!(parsed.generation(), 7);
        assert_eq!(parsed.hash(), token.hash());
        assert_ne!(RefreshToken::generate(session, 7).hash(), token.hash());
        assert!(!format!("{token:?}").contains(token.expose()));
    }

    #[test]
    fn malformed_refresh_tokens_are_refused() {
        for bad in [
            "",
            "klr_",
            "klr_abc",
            "nope_AAAA",
            &format!("klr_{}", "!".repeat(64)),
        ] {
            assert!(RefreshToken::parse(bad).is_err(), "{bad}");
        }
    }
}
