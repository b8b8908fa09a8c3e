//! The token endpoint's grants for apps: the authorization code and the
//! refresh token, and the ID token they answer with.

use super::*;

/// What the token endpoint answers an app (RFC 6749 §5.1, OpenID Connect Core
/// §3.1.3.3).
#[derive(serde::Serialize, ToSchema)]
pub struct AppTokenResponse {
    access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    token_type: &'static str,
    expires_in: u64,
    /// When the client may use the refresh grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// When the scope holds `openid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    /// The granted scope, space-separated.
    scope: String,
}

pub(super) fn app_client(client: &ClientView) -> AppClient {
    AppClient {
        client_id: client.client_id,
        access: match client.access_token_format {
            AccessTokenFormat::Paseto => keyledger_commands::AccessTokenForm::Paseto,
            AccessTokenFormat::Jwt => {
                keyledger_commands::AccessTokenForm::Jwt(jws(client.access_token_alg))
            }
        },
    }
}

pub(super) fn jws(alg: SigningAlg) -> keyledger_commands::JwsAlg {
    match alg {
        SigningAlg::EdDSA => keyledger_commands::JwsAlg::EdDSA,
        SigningAlg::ES256 => keyledger_commands::JwsAlg::ES256,
        SigningAlg::RS256 => keyledger_commands::JwsAlg::RS256,
    }
}

pub fn unauthorized_client(message: &str) -> ApiError {
    ApiError::bad_request("unauthorized_client", message.to_owned())
}

pub fn invalid_scope() -> ApiError {
    ApiError::bad_request(
        "invalid_scope",
        "a refresh may not ask for more than was granted",
    )
}

pub fn invalid_grant(message: &str) -> ApiError {
    ApiError::bad_request("invalid_grant", message.to_owned())
}

/// `grant_type=authorization_code`: the code, once, by the client it was
/// issued to, with the same redirect URI and the PKCE verifier.
pub async fn code_grant(
    state: &AppState,
    ctx: &keyledger_commands::RequestContext,
    client: &ClientView,
    code: Option<&str>,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(unauthorized_client(
            "the client may not use the authorization code grant",
        ));
    }
    let code = code.ok_or_else(|| ApiError::bad_request("invalid_request", "code is required"))?;
    if code.len() > 128 {
        return Err(invalid_grant("no such code"));
    }
    let redemption = state
        .oidc
        .codes
        .redeem(code)
        .await
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    let grant = match redemption {
        Redemption::Granted(grant) => grant,
        Redemption::Replayed {
            client_id,
            session_id,
        } => {
            // A code presented twice may have been stolen: what it gave ends.
            if let Some(session_id) = session_id.filter(|_| client_id == client.client_id) {
                end_app_session(state, ctx, session_id).await;
            }
            metrics::counter!("keyledger_oidc_code_replays_total").increment(1);
            return Err(invalid_grant("the code was used already"));
        }
        Redemption::Unknown => return Err(invalid_grant("no such code, or it expired")),
    };
    if grant.client_id != client.client_id {
        return Err(invalid_grant("the code was issued to another client"));
    }
    if redirect_uri != Some(grant.redirect_uri.as_str()) {
        return Err(invalid_grant(
            "redirect_uri must be the one the code was sent to",
        ));
    }
    match (&grant.code_challenge, verifier) {
        (Some(challenge), Some(verifier)) => {
            let valid = (43..=128).contains(&verifier.len())
                && verifier
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if !valid || !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                return Err(invalid_grant(
                    "code_verifier does not match the code_challenge",
                ));
            }
        }
        (Some(_), None) => return Err(invalid_grant("code_verifier is required")),
        (None, Some(_)) => return Err(invalid_grant("the request sent no code_challenge")),
        (None, None) => {}
    }
    let tokens = state
        .auth
        .start_app_session(&grant, &app_client(client), ctx)
        .await
        .map_err(|e| match e {
            // Suspended or erased since the sign-in: the grant is void.
            AuthError::InvalidCredentials | AuthError::AccountSuspended => {
                invalid_grant("the account can no longer sign in")
            }
            other => other.into(),
        })?;
    if let Err(e) = state.oidc.codes.started(code, tokens.session_id).await {
        tracing::warn!(error = %e, "a redeemed code's session could not be recorded");
    }
    state.settle(tokens.written.clone()).await;
    token_answer(state, client, tokens, grant.nonce.as_deref()).await
}

/// `grant_type=refresh_token`: rotation and reuse detection as for Keyledger's
/// own refresh, for the client the session was granted to; `scope`, if sent,
/// may only narrow what was granted (RFC 6749 §6): the new access token has
/// that scope, and the session keeps its grant for the next refresh.
pub async fn refresh_grant(
    state: &AppState,
    ctx: &keyledger_commands::RequestContext,
    client: &ClientView,
    refresh_token: Option<&str>,
    scope: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    if !client.grant_types.contains(&GrantType::RefreshToken) {
        return Err(unauthorized_client(
            "the client may not use the refresh token grant",
        ));
    }
    let token = refresh_token
        .ok_or_else(|| ApiError::bad_request("invalid_request", "refresh_token is required"))?;
    // Checked before the rotation: a refused scope must not cost the app its
    // refresh token (the rotated one would never reach it).
    let narrowed = match scope {
        None => None,
        Some(requested) => narrowed_scope(state, client, token, requested).await?,
    };
    let tokens = match state
        .auth
        .refresh_app_session(token, &app_client(client), narrowed.as_deref(), ctx)
        .await
    {
        Ok(tokens) => tokens,
        Err(AuthError::RefreshTokenReused {
            session_id,
            written,
        }) => {
            state.revoked.insert(session_id, Utc::now());
            state.settle(written).await;
            return Err(invalid_grant(
                "the refresh token was used already; the session ended",
            ));
        }
        Err(AuthError::InvalidRefreshToken) => {
            return Err(invalid_grant("the refresh token is not valid"))
        }
        Err(e) => return Err(e.into()),
    };
    token_answer(state, client, tokens, None).await
}

/// The scope an app's refresh asks for, if it is within what the session was
/// granted (RFC 6749 §6), space-separated in order; more is `invalid_scope`.
/// A token that is not this client's live refresh token is left to the
/// refresh itself to refuse (`invalid_grant`).
async fn narrowed_scope(
    state: &AppState,
    client: &ClientView,
    token: &str,
    requested: &str,
) -> Result<Option<String>, ApiError> {
    let status = state.auth.refresh_token_status(token).await?;
    let Some(granted) = status
        .filter(|s| s.active && s.client_id == Some(client.client_id))
        .and_then(|s| s.scope)
    else {
        return Ok(None);
    };
    let granted: BTreeSet<&str> = granted.split_whitespace().collect();
    let requested: BTreeSet<&str> = requested.split_whitespace().collect();
    if !requested.is_subset(&granted) {
        return Err(invalid_scope());
    }
    Ok(Some(requested.into_iter().collect::<Vec<_>>().join(" ")))
}

pub(super) async fn token_answer(
    state: &AppState,
    client: &ClientView,
    tokens: AppTokens,
    nonce: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let scopes: BTreeSet<&str> = tokens.scope.split_whitespace().collect();
    let id_token = if scopes.contains("openid") {
        Some(id_token(state, client, &tokens, &scopes, nonce).await?)
    } else {
        None
    };
    let refresh_token = client
        .grant_types
        .contains(&GrantType::RefreshToken)
        .then(|| tokens.refresh_token.expose().to_owned());
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(AppTokenResponse {
            access_token: tokens.access_token,
            token_type: "Bearer",
            expires_in: tokens.expires_in,
            refresh_token,
            id_token,
            scope: tokens.scope,
        }))
}

/// The user's claims a scope releases (OpenID Connect Core §5.4), from the
/// users read model.
pub(super) async fn scoped_claims(
    state: &AppState,
    user_id: Uuid,
    scopes: &BTreeSet<&str>,
    claims: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    if !scopes.contains("email") && !scopes.contains("profile") {
        return Ok(());
    }
    let account = state
        .queries
        .account(user_id)
        .await
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))?;
    let Some(account) = account else {
        return Ok(());
    };
    if scopes.contains("email") {
        claims.insert("email".into(), json!(account.email));
        claims.insert("email_verified".into(), json!(account.email_verified));
    }
    if scopes.contains("profile") {
        if let Some(name) = account.display_name {
            claims.insert("name".into(), json!(name));
        }
    }
    Ok(())
}

pub(super) async fn id_token(
    state: &AppState,
    client: &ClientView,
    tokens: &AppTokens,
    scopes: &BTreeSet<&str>,
    nonce: Option<&str>,
) -> Result<String, ApiError> {
    let now = Utc::now().timestamp();
    let lifetime = i64::try_from(tokens.expires_in).unwrap_or(900);
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(state.oidc.issuer));
    claims.insert("sub".into(), json!(tokens.user_id));
    claims.insert("aud".into(), json!(client.client_id));
    claims.insert("azp".into(), json!(client.client_id));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + lifetime));
    claims.insert("auth_time".into(), json!(tokens.auth_time.timestamp()));
    claims.insert("sid".into(), json!(tokens.session_id));
    claims.insert("acr".into(), json!(acr_of(&tokens.factors)));
    if !tokens.factors.is_empty() {
        claims.insert("amr".into(), json!(tokens.factors));
    }
    if let Some(nonce) = nonce {
        claims.insert("nonce".into(), json!(nonce));
    }
    scoped_claims(state, tokens.user_id, scopes, &mut claims).await?;
    state
        .auth
        .tokens()
        .jwt_keys()
        .sign(jws(client.id_token_alg), "JWT", &Value::Object(claims))
        .map_err(|e| ApiError::Auth(AuthError::Unavailable(e.to_string())))
}

pub(super) async fn end_app_session(
    state: &AppState,
    ctx: &keyledger_commands::RequestContext,
    session_id: Uuid,
) {
    match state.auth.end_app_session(session_id, ctx).await {
        Ok(Some(written)) => {
            state.revoked.insert(session_id, Utc::now());
            state.settle([written]).await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "an app's session could not be ended"),
    }
}
