//! Client authentication at the back-channel endpoints (RFC 6749 §2.3.1).

use super::*;

/// Who a back-channel request says it is: from `Authorization: Basic`
/// (`client_secret_basic`, the id and secret form-urlencoded first) or from the
/// body (`client_secret_post`, or `none` for a public client's `client_id`).
#[derive(Default)]
pub struct ClientCredentials {
    pub client_id: Option<String>,
    pub secret: Option<String>,
    /// Whether they came in `Authorization: Basic`.
    pub basic: bool,
}

impl ClientCredentials {
    /// From the request's header and the body's `client_id`/`client_secret`;
    /// more than one method at once is `invalid_request` (RFC 6749 §2.3).
    pub fn of(
        req: &HttpRequest,
        body_id: Option<&str>,
        body_secret: Option<&str>,
    ) -> Result<Self, ApiError> {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return Ok(Self {
                client_id: body_id.map(str::to_owned),
                secret: body_secret.map(str::to_owned),
                basic: false,
            });
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(invalid_client_request(
                "only HTTP Basic client authentication",
            ));
        }
        let decoded = STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| invalid_client_request("the Basic credentials do not decode"))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| invalid_client_request("the Basic credentials do not decode"))?;
        let decode = |part: &str| {
            url::form_urlencoded::parse(format!("v={part}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (id, secret) = (decode(id), decode(secret));
        if body_secret.is_some() || body_id.is_some_and(|body_id| body_id != id) {
            return Err(invalid_client_request(
                "the client authenticates one way: in the Authorization header or the body",
            ));
        }
        Ok(Self {
            client_id: Some(id),
            secret: Some(secret),
            basic: true,
        })
    }
}

pub(super) fn invalid_client_request(message: &str) -> ApiError {
    ApiError::bad_request("invalid_request", message.to_owned())
}

/// Authenticates the app presenting `credentials`; any failure is 401
/// `invalid_client` (with `WWW-Authenticate: Basic`, RFC 6749 §5.2).
pub async fn authenticate_client(
    state: &AppState,
    credentials: &ClientCredentials,
) -> Result<ClientView, ApiError> {
    let id = credentials.client_id.as_deref().unwrap_or_default();
    Ok(state
        .oauth_clients
        .authenticate(id, credentials.secret.as_deref())
        .await?)
}
