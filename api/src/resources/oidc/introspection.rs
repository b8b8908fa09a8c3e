//! Revocation (RFC 7009) and introspection (RFC 7662).

use super::*;

/// A revocation or introspection request (RFC 7009 §2.1, RFC 7662 §2.1), with
/// the client's credentials in the body or in `Authorization: Basic`.
#[derive(Deserialize, ToSchema)]
pub struct TokenQuery {
    token: Option<String>,
    /// `access_token` or `refresh_token`: a hint, tried first.
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// Reads the body as a form (as RFC 7009 and 7662 send it) or as JSON, by its
/// content type; a refusal never repeats the body (it holds a token).
pub(super) fn token_query(req: &HttpRequest, body: &[u8]) -> Result<TokenQuery, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut query: TokenQuery = if content_type.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(body)
            .map_err(|_| ApiError::bad_request("invalid_request", "the form does not parse"))?
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(body).map_err(|e| {
            crate::error::json_error(actix_web::error::JsonPayloadError::Deserialize(e))
        })?
    } else {
        return Err(ApiError::UnsupportedMediaType);
    };
    for value in [
        &mut query.token,
        &mut query.token_type_hint,
        &mut query.client_id,
        &mut query.client_secret,
    ] {
        present(value);
    }
    Ok(query)
}

/// The token of a revocation or introspection request, checked before the
/// client is: a request without one is malformed whoever sends it.
fn token_of(query: &TokenQuery) -> Result<String, ApiError> {
    query
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_request", "token is required"))
}

failures!(
    /// What `revoke` and `introspect` can answer besides 200.
    pub TokenQueryFailures = [
        raw_body(),
        crate::resources::access::invalid_request(),
        crate::openapi::json_body(),
        ApiError::UnsupportedMediaType,
        keyledger_commands::OAuthClientError::InvalidClient,
        unavailable(),
    ]
);

failures!(
    /// What `revoke` can answer besides 200.
    pub RevokeFailures = [
        raw_body(),
        crate::resources::access::invalid_request(),
        crate::openapi::json_body(),
        ApiError::UnsupportedMediaType,
        keyledger_commands::OAuthClientError::InvalidClient,
        unauthorized_client("the token was not issued to this client"),
        unavailable(),
    ]
);

/// Token revocation (RFC 7009)
///
/// Ends the session behind a refresh token or an access token the calling
/// client was issued (the app's sign-in ends: every token of it stops working
/// at once). An unknown, invalid, expired or already revoked token answers 200
/// all the same (§2.2); a live token issued to another client (or to none) is
/// refused with 400 `unauthorized_client` and stays as it was (§2.1).
#[utoipa::path(
    post,
    path = "/revoke",
    tag = "oidc",
    request_body(content = TokenQuery, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or nothing to revoke."),
        RevokeFailures,
    )
)]
pub async fn revoke(
    state: State,
    ctx: Context,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let query = token_query(&req, &body.0)?;
    let token = token_of(&query)?;
    let credentials = ClientCredentials::of(
        &req,
        query.client_id.as_deref(),
        query.client_secret.as_deref(),
    )?;
    let client = authenticate_client(&state, &credentials).await?;
    let refresh_first = query.token_type_hint.as_deref() == Some("refresh_token");
    let session = token_session(&state, &token, refresh_first).await?;
    if let Some((session_id, client_id)) = session {
        // RFC 7009 §2.1: a token issued to someone else is refused, and the client
        // told so; it learns nothing it could not learn by using the token it holds.
        if client_id != Some(client.client_id) {
            return Err(unauthorized_client(
                "the token was not issued to this client",
            ));
        }
        end_app_session(&state, &ctx.0, session_id).await;
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// The session a token belongs to and the client it was granted to, for a
/// refresh token or an access token (tried in the hinted order).
pub(super) async fn token_session(
    state: &AppState,
    token: &str,
    refresh_first: bool,
) -> Result<Option<(Uuid, Option<Uuid>)>, ApiError> {
    let as_access = || {
        state
            .auth
            .tokens()
            .verify(token)
            .ok()
            .filter(|c| c.kind == SubjectKind::User)
            .map(|c| {
                let client = c.client_id.as_deref().and_then(|id| id.parse().ok());
                (c.session_id, client)
            })
    };
    if !refresh_first {
        if let Some(found) = as_access() {
            return Ok(Some(found));
        }
    }
    if let Some(status) = state.auth.refresh_token_status(token).await? {
        return Ok(Some((status.session_id, status.client_id)));
    }
    Ok(as_access())
}

/// Token introspection (RFC 7662)
///
/// For an authenticated confidential client (a resource server registered as
/// one): whether an access or refresh token is active, and what it is (an
/// access token: `token_type` `Bearer` and the claims `validate` answers; a
/// refresh token: no `token_type`). Inactive tokens answer `{"active": false}`
/// and nothing else.
#[utoipa::path(
    post,
    path = "/introspect",
    tag = "oidc",
    request_body(content = TokenQuery, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`active`, and the token's claims when it is: for an \
            access token the same answer as `validate`.",
            body = crate::resources::auth::Introspection),
        TokenQueryFailures,
    )
)]
pub async fn introspect(
    state: State,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let query = token_query(&req, &body.0)?;
    let token = token_of(&query)?;
    let credentials = ClientCredentials::of(
        &req,
        query.client_id.as_deref(),
        query.client_secret.as_deref(),
    )?;
    let client = authenticate_client(&state, &credentials).await?;
    if !client.confidential {
        return Err(OAuthClientError::InvalidClient.into());
    }
    let answer = match introspection(&state, &token, query.token_type_hint.as_deref()).await? {
        Some(answer) => answer,
        None => json!({ "active": false }),
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(answer))
}

pub(super) async fn introspection(
    state: &AppState,
    token: &str,
    hint: Option<&str>,
) -> Result<Option<Value>, ApiError> {
    let access = || live_claims(state, token).map(access_introspection);
    if hint != Some("refresh_token") {
        if let Some(answer) = access() {
            return Ok(Some(answer));
        }
    }
    if let Some(status) = state.auth.refresh_token_status(token).await? {
        if status.active && !state.revoked.is_revoked(&status.session_id) {
            // No `token_type`: RFC 7662 §2.2 takes it from RFC 6749 §5.1, which
            // types access tokens only. A resource server that checks for
            // `Bearer` never takes a refresh token for an access token.
            let mut answer = json!({
                "active": true,
                "sub": status.user_id,
                "sid": status.session_id,
                "iss": state.oidc.issuer,
            });
            if let Some(client_id) = status.client_id {
                answer["client_id"] = json!(client_id);
            }
            if let Some(scope) = status.scope {
                answer["scope"] = json!(scope);
            }
            if let Some(expires_at) = status.expires_at {
                answer["exp"] = json!(expires_at.timestamp());
            }
            return Ok(Some(answer));
        }
        return Ok(None);
    }
    Ok(access())
}

/// An access token's answer: the same as `validate`'s for the same token.
pub(super) fn access_introspection(claims: AccessClaims) -> Value {
    serde_json::to_value(crate::resources::auth::Introspection::of(claims))
        .unwrap_or_else(|_| json!({ "active": false }))
}
