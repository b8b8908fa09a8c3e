//! UserInfo (OpenID Connect Core §5.3).

use super::*;

/// The bearer token of a userinfo request: the `Authorization` header only
/// (RFC 6750 §2.1; a token in a query string would land in logs).
pub(super) fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// UserInfo (OpenID Connect Core §5.3)
///
/// The signed-in user's claims for an access token with scope `openid`: `sub`,
/// and `email`/`email_verified` (scope `email`) and `name` (scope `profile`).
/// The token goes in `Authorization: Bearer`.
#[utoipa::path(
    get,
    path = "/userinfo",
    tag = "oidc",
    responses(
        (status = 200, description = "The user's claims.", body = Object),
        UserinfoFailures,
    ),
    security(("bearer" = []))
)]
pub async fn userinfo(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let claims = bearer_token(&req)
        .and_then(|token| live_claims(&state, token))
        .filter(|claims| claims.kind == SubjectKind::User)
        .ok_or(ApiError::Unauthorized)?;
    // Keyledger's own tokens carry no scope and speak for the whole account.
    let scopes: BTreeSet<&str> = match claims.scope.as_deref() {
        Some(scope) => scope.split_whitespace().collect(),
        None => SCOPES.into_iter().collect(),
    };
    if !scopes.contains("openid") {
        return Err(ApiError::InsufficientScope);
    }
    let mut answer = Map::new();
    answer.insert("sub".into(), json!(claims.user_id));
    scoped_claims(&state, claims.user_id, &scopes, &mut answer).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(Value::Object(answer)))
}

failures!(
    /// What `userinfo` can answer besides 200.
    pub UserinfoFailures = [ApiError::Unauthorized, ApiError::InsufficientScope, unavailable()]
);

/// UserInfo, as a post (OpenID Connect Core §5.3.1)
///
/// The same as `GET`.
#[utoipa::path(
    post,
    path = "/userinfo",
    tag = "oidc",
    responses(
        (status = 200, description = "The user's claims.", body = Object),
        UserinfoFailures,
    ),
    security(("bearer" = []))
)]
pub async fn userinfo_post(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    userinfo(state, req).await
}
