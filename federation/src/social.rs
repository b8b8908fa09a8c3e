//! The OAuth presets (GitHub, Kakao, Naver): no ID token, so the profile comes from each
//! provider's own user endpoint, in its own shape. Plain reqwest and our own serde structs
//! rather than the `oauth2` crate's token types, because these providers bend the standard
//! answer: Naver sends `expires_in` as a string, and Naver and GitHub send errors with HTTP
//! 200, which a strict parser reports as a malformed answer instead of the error it is.

use chrono::{Duration as ChronoDuration, Utc};
use serde::Deserialize;
use url::Url;

use crate::config::Preset;
use crate::http::Http;
use crate::types::{ProviderError, ProviderTokens};

/// The endpoints of one OAuth provider: the documented ones unless overridden.
#[derive(Clone, Debug)]
pub(crate) struct Endpoints {
    pub(crate) authorize: Url,
    pub(crate) token: Url,
    pub(crate) userinfo: Url,
}

impl Endpoints {
    pub(crate) fn documented(preset: Preset) -> Endpoints {
        let (a, t, u) = match preset {
            Preset::Github => (
                "https://github.com/login/oauth/authorize",
                "https://github.com/login/oauth/access_token",
                "https://api.github.com/user",
            ),
            Preset::Kakao => (
                "https://kauth.kakao.com/oauth/authorize",
                "https://kauth.kakao.com/oauth/token",
                "https://kapi.kakao.com/v2/user/me",
            ),
            Preset::Naver => (
                "https://nid.naver.com/oauth2.0/authorize",
                "https://nid.naver.com/oauth2.0/token",
                "https://openapi.naver.com/v1/nid/me",
            ),
            Preset::Google | Preset::Microsoft | Preset::Oidc => {
                unreachable!("OIDC presets take their endpoints from discovery")
            }
        };
        let parse = |s: &str| Url::parse(s).expect("documented endpoint is a valid URL");
        Endpoints {
            authorize: parse(a),
            token: parse(t),
            userinfo: parse(u),
        }
    }
}

/// The profile fields before the tokens are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub(crate) subject: String,
    pub(crate) email: Option<String>,
    pub(crate) email_verified: bool,
    pub(crate) name: Option<String>,
}

/// `expires_in` as a number (the standard) or a string (Naver).
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum ExpiresIn {
    Number(i64),
    Text(String),
}

impl ExpiresIn {
    fn seconds(&self) -> Option<i64> {
        match self {
            ExpiresIn::Number(n) => Some(*n),
            ExpiresIn::Text(s) => s.trim().parse().ok(),
        }
    }
}

/// A token endpoint's answer, success or error, as all three providers send it.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<ExpiresIn>,
    scope: Option<String>,
    error: Option<String>,
}

/// Reads a token endpoint's answer. An `error` field wins whatever the status, since Naver
/// and GitHub send errors with 200.
pub(crate) fn parse_token_answer(body: &[u8]) -> Result<ProviderTokens, ProviderError> {
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(|e| {
        ProviderError::InvalidResponse(format!("token answer is not the expected JSON: {e}"))
    })?;
    if let Some(code) = answer.error.filter(|c| !c.is_empty()) {
        return Err(ProviderError::Refused { code });
    }
    let access_token = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ProviderError::InvalidResponse("token answer has no access_token".into()))?;
    let expires_at = answer
        .expires_in
        .and_then(|e| e.seconds())
        .filter(|s| *s > 0)
        .and_then(ChronoDuration::try_seconds)
        .and_then(|d| Utc::now().checked_add_signed(d));
    Ok(ProviderTokens {
        access_token,
        refresh_token: answer.refresh_token.filter(|t| !t.is_empty()),
        expires_at,
        scope: answer.scope.filter(|s| !s.is_empty()),
    })
}

/// Sends a request and returns the body of a non-5xx answer. No answer or a 5xx is
/// `Unavailable` (the breaker counts it); the caller judges 4xx bodies.
async fn send(request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), ProviderError> {
    let response = request.send().await.map_err(|e| {
        // reqwest errors print the URL; keep it out of logs in case a query carries a secret.
        tracing::debug!(error = %e.without_url(), "provider request failed");
        ProviderError::Unavailable
    })?;
    let status = response.status();
    if status.is_server_error() {
        tracing::debug!(status = status.as_u16(), "provider answered a server error");
        return Err(ProviderError::Unavailable);
    }
    let body = response
        .bytes()
        .await
        .map_err(|_| ProviderError::Unavailable)?;
    Ok((status.as_u16(), body.to_vec()))
}

pub(crate) struct TokenRequest<'a> {
    pub(crate) preset: Preset,
    pub(crate) token_url: &'a Url,
    pub(crate) client_id: &'a str,
    pub(crate) client_secret: Option<&'a str>,
}

impl TokenRequest<'_> {
    /// Client authentication in the request body: Kakao and Naver accept nothing else, and
    /// GitHub documents only that.
    async fn post(
        &self,
        http: &Http,
        mut form: Vec<(&str, &str)>,
    ) -> Result<ProviderTokens, ProviderError> {
        form.push(("client_id", self.client_id));
        if let Some(secret) = self.client_secret {
            form.push(("client_secret", secret));
        }
        let request = http
            .client
            .post(self.token_url.clone())
            // GitHub answers form-encoded unless asked for JSON; the others ignore it.
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form);
        let (status, body) = send(request).await?;
        match parse_token_answer(&body) {
            Err(ProviderError::InvalidResponse(why)) if status >= 400 => {
                Err(ProviderError::InvalidResponse(format!(
                    "token endpoint answered HTTP {status}: {why}"
                )))
            }
            other => other,
        }
    }

    /// The code exchange. `state` goes along only to Naver, whose token
    /// endpoint requires the `state` the authorization carried.
    pub(crate) async fn exchange(
        &self,
        http: &Http,
        (code, state): (&str, &str),
        redirect_uri: &Url,
        pkce_verifier: &str,
    ) -> Result<ProviderTokens, ProviderError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", pkce_verifier),
        ];
        if self.preset == Preset::Naver {
            form.push(("state", state));
        }
        self.post(http, form).await
    }

    pub(crate) async fn refresh(
        &self,
        http: &Http,
        refresh_token: &str,
    ) -> Result<ProviderTokens, ProviderError> {
        self.post(
            http,
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }
}

/// Fetches the user's profile with the access token and maps it to a [`Profile`].
pub(crate) async fn fetch_profile(
    http: &Http,
    preset: Preset,
    userinfo: &Url,
    access_token: &str,
) -> Result<Profile, ProviderError> {
    match preset {
        Preset::Kakao => {
            let body = get_json(http, preset, userinfo.clone(), access_token).await?;
            map_kakao(&body)
        }
        Preset::Naver => {
            let body = get_json(http, preset, userinfo.clone(), access_token).await?;
            map_naver(&body)
        }
        Preset::Github => {
            let user = get_json(http, preset, userinfo.clone(), access_token).await?;
            let emails = get_json(http, preset, github_emails_url(userinfo), access_token).await?;
            map_github(&user, &emails)
        }
        Preset::Google | Preset::Microsoft | Preset::Oidc => {
            unreachable!("OIDC presets read the ID token")
        }
    }
}

/// GitHub's address list sits beside the user: `{user}/emails`.
fn github_emails_url(user: &Url) -> Url {
    let mut url = user.clone();
    let path = format!("{}/emails", user.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

async fn get_json(
    http: &Http,
    preset: Preset,
    url: Url,
    access_token: &str,
) -> Result<Vec<u8>, ProviderError> {
    let mut request = http.client.get(url).bearer_auth(access_token);
    if preset == Preset::Github {
        request = request
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
    }
    let (status, body) = send(request).await?;
    if status >= 400 {
        return Err(ProviderError::InvalidResponse(format!(
            "user info answered HTTP {status}"
        )));
    }
    Ok(body)
}

fn malformed(what: &str, e: serde_json::Error) -> ProviderError {
    ProviderError::InvalidResponse(format!("{what} is not the expected JSON: {e}"))
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

#[derive(Deserialize)]
struct KakaoUser {
    id: Option<i64>,
    kakao_account: Option<KakaoAccount>,
    properties: Option<KakaoProperties>,
}

#[derive(Deserialize)]
struct KakaoAccount {
    profile: Option<KakaoProfile>,
    email: Option<String>,
    is_email_valid: Option<bool>,
    is_email_verified: Option<bool>,
}

#[derive(Deserialize)]
struct KakaoProfile {
    nickname: Option<String>,
}

/// Older apps get the nickname here instead of under the account profile.
#[derive(Deserialize)]
struct KakaoProperties {
    nickname: Option<String>,
}

/// Kakao's `/v2/user/me`. The numeric id is the subject. The email counts as verified only
/// when Kakao says it is both valid (still the user's) and verified.
pub(crate) fn map_kakao(body: &[u8]) -> Result<Profile, ProviderError> {
    let user: KakaoUser = serde_json::from_slice(body).map_err(|e| malformed("Kakao user", e))?;
    let id = user
        .id
        .ok_or_else(|| ProviderError::InvalidResponse("Kakao user has no id".into()))?;
    let account = user.kakao_account;
    let (email, email_verified, nickname) = match account {
        Some(a) => {
            let verified = a.is_email_valid == Some(true) && a.is_email_verified == Some(true);
            (
                non_empty(a.email),
                verified,
                a.profile.and_then(|p| non_empty(p.nickname)),
            )
        }
        None => (None, false, None),
    };
    let name = nickname.or_else(|| user.properties.and_then(|p| non_empty(p.nickname)));
    Ok(Profile {
        subject: id.to_string(),
        email_verified: email_verified && email.is_some(),
        email,
        name,
    })
}

#[derive(Deserialize)]
struct NaverAnswer {
    resultcode: Option<String>,
    message: Option<String>,
    response: Option<NaverUser>,
}

#[derive(Deserialize)]
struct NaverUser {
    id: Option<String>,
    email: Option<String>,
    nickname: Option<String>,
    name: Option<String>,
}

/// Naver's `/v1/nid/me`. `resultcode` must be `"00"`. Naver has no verified flag on the
/// address, so it is never verified and can never link an existing account by itself.
pub(crate) fn map_naver(body: &[u8]) -> Result<Profile, ProviderError> {
    let answer: NaverAnswer =
        serde_json::from_slice(body).map_err(|e| malformed("Naver profile", e))?;
    if answer.resultcode.as_deref() != Some("00") {
        return Err(ProviderError::InvalidResponse(format!(
            "Naver profile result {:?}: {:?}",
            answer.resultcode, answer.message
        )));
    }
    let user = answer
        .response
        .ok_or_else(|| ProviderError::InvalidResponse("Naver profile has no response".into()))?;
    let subject = non_empty(user.id)
        .ok_or_else(|| ProviderError::InvalidResponse("Naver profile has no id".into()))?;
    Ok(Profile {
        subject,
        email: non_empty(user.email),
        email_verified: false,
        name: non_empty(user.nickname).or_else(|| non_empty(user.name)),
    })
}

#[derive(Deserialize)]
struct GithubUser {
    id: Option<i64>,
    login: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct GithubEmail {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

/// GitHub's `/user` and `/user/emails`. The numeric id is the subject (the login can be
/// renamed and then taken by someone else). The public `email` on `/user` carries no
/// verification, so only the primary, verified address of `/user/emails` is used.
pub(crate) fn map_github(user: &[u8], emails: &[u8]) -> Result<Profile, ProviderError> {
    let user: GithubUser = serde_json::from_slice(user).map_err(|e| malformed("GitHub user", e))?;
    let emails: Vec<GithubEmail> =
        serde_json::from_slice(emails).map_err(|e| malformed("GitHub emails", e))?;
    let id = user
        .id
        .ok_or_else(|| ProviderError::InvalidResponse("GitHub user has no id".into()))?;
    let email = emails
        .into_iter()
        .find(|e| e.primary && e.verified)
        .map(|e| e.email);
    Ok(Profile {
        subject: id.to_string(),
        email_verified: email.is_some(),
        email,
        name: non_empty(user.name).or_else(|| non_empty(user.login)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kakao_profile_maps_id_nickname_and_a_valid_verified_email() {
        let body = br#"{
            "id": 3141592653589,
            "connected_at": "2026-01-02T03:04:05Z",
            "properties": {"nickname": "old-style"},
            "kakao_account": {
                "profile_nickname_needs_agreement": false,
                "profile": {"nickname": "Hong Gildong", "is_default_image": true},
                "has_email": true,
                "email_needs_agreement": false,
                "is_email_valid": true,
                "is_email_verified": true,
                "email": "gildong@kakao.example"
            }
        }"#;
        let p = map_kakao(body).unwrap();
        assert_eq!(p.subject, "3141592653589");
        assert_eq!(p.email.as_deref(), Some("gildong@kakao.example"));
        assert!(p.email_verified);
        assert_eq!(p.name.as_deref(), Some("Hong Gildong"));
    }

    #[test]
    fn kakao_email_that_is_no_longer_valid_is_not_verified() {
        let body = br#"{"id": 7, "kakao_account": {"email": "a@b.example",
            "is_email_valid": false, "is_email_verified": true}}"#;
        let p = map_kakao(body).unwrap();
        assert_eq!(p.email.as_deref(), Some("a@b.example"));
        assert!(!p.email_verified);
        let unverified = br#"{"id": 7, "kakao_account": {"email": "a@b.example",
            "is_email_valid": true, "is_email_verified": false}}"#;
        assert!(!map_kakao(unverified).unwrap().email_verified);
    }

    #[test]
    fn kakao_without_account_consent_still_gives_the_subject() {
        let p = map_kakao(br#"{"id": 42, "properties": {"nickname": "Kim"}}"#).unwrap();
        assert_eq!(p.subject, "42");
        assert_eq!(p.email, None);
        assert!(!p.email_verified);
        assert_eq!(p.name.as_deref(), Some("Kim"));
    }

    #[test]
    fn kakao_without_id_is_refused() {
        assert!(matches!(
            map_kakao(br#"{"kakao_account": {}}"#),
            Err(ProviderError::InvalidResponse(_))
        ));
    }

    #[test]
    fn naver_profile_maps_and_the_email_is_never_verified() {
        let body = br#"{"resultcode": "00", "message": "success", "response": {
            "id": "32742776", "nickname": "OpenAPI", "name": "Naver User",
            "email": "openapi@naver.example", "gender": "F", "age": "40-49",
            "profile_image": "https://ssl.pstatic.net/static/pwe/address/nodata_33x33.gif"}}"#;
        let p = map_naver(body).unwrap();
        assert_eq!(p.subject, "32742776");
        assert_eq!(p.email.as_deref(), Some("openapi@naver.example"));
        assert!(!p.email_verified);
        assert_eq!(p.name.as_deref(), Some("OpenAPI"));
    }

    #[test]
    fn naver_falls_back_to_the_name_without_a_nickname() {
        let body = br#"{"resultcode": "00", "response": {"id": "1", "name": "Kim"}}"#;
        assert_eq!(map_naver(body).unwrap().name.as_deref(), Some("Kim"));
    }

    #[test]
    fn naver_error_result_is_refused() {
        let body = br#"{"resultcode": "024", "message": "Authentication failed"}"#;
        assert!(matches!(
            map_naver(body),
            Err(ProviderError::InvalidResponse(_))
        ));
    }

    #[test]
    fn github_takes_only_the_primary_verified_email() {
        let user = br#"{"login": "octocat", "id": 583231, "name": "The Octocat",
            "email": "public@octocat.example"}"#;
        let emails = br#"[
            {"email": "old@octocat.example", "primary": false, "verified": true, "visibility": null},
            {"email": "octocat@github.example", "primary": true, "verified": true, "visibility": "public"}
        ]"#;
        let p = map_github(user, emails).unwrap();
        assert_eq!(p.subject, "583231");
        assert_eq!(p.email.as_deref(), Some("octocat@github.example"));
        assert!(p.email_verified);
        assert_eq!(p.name.as_deref(), Some("The Octocat"));
    }

    #[test]
    fn github_without_a_verified_primary_has_no_email_and_names_by_login() {
        let user = br#"{"login": "octocat", "id": 1, "name": null, "email": "x@y.example"}"#;
        let emails = br#"[{"email": "a@b.example", "primary": true, "verified": false}]"#;
        let p = map_github(user, emails).unwrap();
        assert_eq!(p.email, None);
        assert!(!p.email_verified);
        assert_eq!(p.name.as_deref(), Some("octocat"));
    }

    #[test]
    fn github_emails_url_sits_under_the_user_url() {
        let u = Url::parse("https://api.github.com/user").unwrap();
        assert_eq!(
            github_emails_url(&u).as_str(),
            "https://api.github.com/user/emails"
        );
        let u = Url::parse("http://127.0.0.1:9/gh/user/").unwrap();
        assert_eq!(
            github_emails_url(&u).as_str(),
            "http://127.0.0.1:9/gh/user/emails"
        );
    }

    #[test]
    fn naver_token_answer_with_a_string_expires_in_parses() {
        let t = parse_token_answer(
            br#"{"access_token": "AAAA", "refresh_token": "RRRR",
                 "token_type": "bearer", "expires_in": "3600"}"#,
        )
        .unwrap();
        assert_eq!(t.access_token, "AAAA");
        assert_eq!(t.refresh_token.as_deref(), Some("RRRR"));
        let left = t.expires_at.unwrap() - Utc::now();
        assert!(left.num_seconds() > 3590 && left.num_seconds() <= 3600);
    }

    #[test]
    fn an_error_sent_with_status_200_is_a_refusal() {
        assert_eq!(
            parse_token_answer(
                br#"{"error": "invalid_request", "error_description": "no valid offline"}"#
            ),
            Err(ProviderError::Refused {
                code: "invalid_request".into()
            })
        );
        assert_eq!(
            parse_token_answer(
                br#"{"error": "bad_verification_code", "error_uri": "https://docs.github.com"}"#
            ),
            Err(ProviderError::Refused {
                code: "bad_verification_code".into()
            })
        );
    }

    #[test]
    fn a_token_answer_without_access_token_is_malformed() {
        assert!(matches!(
            parse_token_answer(br#"{"token_type": "bearer"}"#),
            Err(ProviderError::InvalidResponse(_))
        ));
        assert!(matches!(
            parse_token_answer(b"access_token=abc&scope=user"),
            Err(ProviderError::InvalidResponse(_))
        ));
    }
}
