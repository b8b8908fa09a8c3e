//! The OAuth presets against a canned provider on loopback: what this crate sends (client
//! authentication, PKCE verifier, GitHub's headers) and how it reads the answers. The
//! provider is a few lines of HTTP over a `TcpListener` owned by each test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyledger_federation::{
    ClientSecret, FederationSettings, Preset, ProviderConfig, ProviderError, Providers,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

impl Seen {
    fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
}

/// Answers each path with a fixed status, headers and body, and records every request.
struct Canned {
    base: Url,
    seen: Arc<Mutex<Vec<Seen>>>,
}

type Route = (u16, Vec<(&'static str, &'static str)>, String);

async fn canned(routes: Vec<(&'static str, Route)>) -> Canned {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let routes: Arc<HashMap<&'static str, Route>> = Arc::new(routes.into_iter().collect());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let routes = Arc::clone(&routes);
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = socket.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let mut start = lines.next().unwrap().split(' ');
                let method = start.next().unwrap().to_owned();
                let path = start.next().unwrap().to_owned();
                let headers: HashMap<String, String> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .get("content-length")
                    .map_or(0, |l| l.parse().unwrap());
                while buf.len() < head_end + length {
                    let n = socket.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
                let route = path.split('?').next().unwrap().to_owned();
                log.lock().unwrap().push(Seen {
                    method,
                    path,
                    headers,
                    body,
                });
                let (status, extra, body) =
                    routes
                        .get(route.as_str())
                        .cloned()
                        .unwrap_or((404, vec![], "{}".into()));
                let mut answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in extra {
                    answer.push_str(&format!("{k}: {v}\r\n"));
                }
                answer.push_str("\r\n");
                answer.push_str(&body);
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    Canned { base, seen }
}

impl Canned {
    fn url(&self, path: &str) -> Option<Url> {
        Some(self.base.join(path).unwrap())
    }

    fn seen(&self, path: &str) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.path.split('?').next() == Some(path))
            .cloned()
            .unwrap_or_else(|| panic!("no request to {path}"))
    }
}

fn ok(body: &str) -> Route {
    (200, vec![], body.to_owned())
}

fn providers(preset: Preset, provider: &Canned, user: &str) -> Providers {
    Providers::new(
        vec![ProviderConfig {
            name: "p".into(),
            preset,
            display_name: None,
            client_id: "the-client".into(),
            client_secret: Some(ClientSecret::new("the-secret".into())),
            scopes: None,
            issuer: None,
            authorize_url: provider.url("/authorize"),
            token_url: provider.url("/token"),
            userinfo_url: provider.url(user),
            trust_mfa: true,
            keep_tokens: true,
        }],
        FederationSettings {
            timeout: Duration::from_secs(5),
            breaker_failures: 2,
            breaker_cooldown: Duration::from_secs(60),
        },
        &Url::parse("https://auth.example.com").unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn kakao_sign_in_sends_the_secret_in_the_body_and_reads_the_profile() {
    let kakao = canned(vec![
        (
            "/token",
            ok(
                r#"{"token_type":"bearer","access_token":"kakao-at","expires_in":21599,
                "refresh_token":"kakao-rt","refresh_token_expires_in":5183999,
                "scope":"account_email profile_nickname"}"#,
            ),
        ),
        (
            "/v2/user/me",
            ok(
                r#"{"id":4000000001,"kakao_account":{"profile":{"nickname":"Ryan"},
                "email":"ryan@kakao.example","is_email_valid":true,"is_email_verified":true}}"#,
            ),
        ),
    ])
    .await;
    let providers = providers(Preset::Kakao, &kakao, "/v2/user/me");
    let p = providers.get("p").unwrap();
    let a = p.authorization(&[]).await.unwrap();
    assert!(a
        .url
        .as_str()
        .starts_with(kakao.url("/authorize").unwrap().as_str()));

    let profile = p
        .complete("the-code", "the-state", &a.pkce_verifier, None)
        .await
        .unwrap();
    assert_eq!(profile.subject, "4000000001");
    assert_eq!(profile.email.as_deref(), Some("ryan@kakao.example"));
    assert!(profile.email_verified);
    assert_eq!(profile.name.as_deref(), Some("Ryan"));
    assert!(!profile.provider_mfa, "OAuth presets never report MFA");
    assert_eq!(profile.tokens.access_token, "kakao-at");
    assert_eq!(profile.tokens.refresh_token.as_deref(), Some("kakao-rt"));

    let token = kakao.seen("/token");
    assert_eq!(token.method, "POST");
    assert!(!token.headers.contains_key("authorization"));
    let form = token.form();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "the-code");
    assert_eq!(form["client_id"], "the-client");
    assert_eq!(form["client_secret"], "the-secret");
    assert_eq!(form["code_verifier"], a.pkce_verifier);
    assert_eq!(form["redirect_uri"], p.callback_url().as_str());
    let me = kakao.seen("/v2/user/me");
    assert_eq!(me.headers["authorization"], "Bearer kakao-at");
    assert_eq!(me.headers["user-agent"], "keyledger");
}

#[tokio::test]
async fn naver_string_expiry_and_errors_sent_with_200_are_understood() {
    let naver = canned(vec![
        (
            "/token",
            ok(r#"{"access_token":"naver-at","refresh_token":"naver-rt","token_type":"bearer","expires_in":"3600"}"#),
        ),
        (
            "/v1/nid/me",
            ok(r#"{"resultcode":"00","message":"success","response":{"id":"naver-id-1","email":"n@naver.example","name":"Naver User"}}"#),
        ),
    ])
    .await;
    let providers = providers(Preset::Naver, &naver, "/v1/nid/me");
    let p = providers.get("p").unwrap();
    let profile = p.complete("c", "the-state", "v", None).await.unwrap();
    assert_eq!(profile.subject, "naver-id-1");
    assert!(
        !profile.email_verified,
        "Naver never says an address is verified"
    );
    assert!(profile.tokens.expires_at.is_some());

    let refused = canned(vec![(
        "/token",
        ok(r#"{"error":"invalid_request","error_description":"no valid offline key"}"#),
    )])
    .await;
    let providers = crate::providers(Preset::Naver, &refused, "/v1/nid/me");
    assert_eq!(
        providers
            .get("p")
            .unwrap()
            .complete("c", "the-state", "v", None)
            .await
            .unwrap_err(),
        ProviderError::Refused {
            code: "invalid_request".into()
        }
    );
}

#[tokio::test]
async fn github_gets_its_headers_and_the_primary_verified_address() {
    let github = canned(vec![
        (
            "/token",
            ok(r#"{"access_token":"gho_x","token_type":"bearer","scope":"read:user,user:email"}"#),
        ),
        ("/user", ok(r#"{"login":"octocat","id":1,"name":"Mona","email":null}"#)),
        (
            "/user/emails",
            ok(r#"[{"email":"mona@github.example","primary":true,"verified":true,"visibility":"private"}]"#),
        ),
    ])
    .await;
    let providers = providers(Preset::Github, &github, "/user");
    let profile = providers
        .get("p")
        .unwrap()
        .complete("c", "the-state", "v", None)
        .await
        .unwrap();
    assert_eq!(profile.subject, "1");
    assert_eq!(profile.email.as_deref(), Some("mona@github.example"));
    assert!(profile.email_verified);
    assert_eq!(github.seen("/token").headers["accept"], "application/json");
    for path in ["/user", "/user/emails"] {
        let seen = github.seen(path);
        assert_eq!(seen.headers["accept"], "application/vnd.github+json");
        assert_eq!(seen.headers["x-github-api-version"], "2022-11-28");
        assert_eq!(seen.headers["user-agent"], "keyledger");
        assert_eq!(seen.headers["authorization"], "Bearer gho_x");
    }
}

#[tokio::test]
async fn a_redirect_from_the_provider_is_not_followed() {
    let provider = canned(vec![
        (
            "/token",
            (302, vec![("location", "/elsewhere")], String::new()),
        ),
        ("/elsewhere", ok(r#"{"access_token":"should-not-be-read"}"#)),
    ])
    .await;
    let providers = providers(Preset::Kakao, &provider, "/v2/user/me");
    let err = providers
        .get("p")
        .unwrap()
        .complete("c", "the-state", "v", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::InvalidResponse(_)), "{err:?}");
    assert!(provider
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.path != "/elsewhere"));
}

#[tokio::test]
async fn server_errors_open_the_breaker_and_refusals_do_not() {
    let provider = canned(vec![("/token", (503, vec![], "<html>down</html>".into()))]).await;
    let providers = providers(Preset::Kakao, &provider, "/v2/user/me");
    let p = providers.get("p").unwrap();
    for _ in 0..2 {
        assert_eq!(
            p.complete("c", "the-state", "v", None).await.unwrap_err(),
            ProviderError::Unavailable
        );
    }
    let before = provider.seen.lock().unwrap().len();
    assert_eq!(
        p.authorization(&[]).await.unwrap_err(),
        ProviderError::Unavailable
    );
    assert_eq!(
        p.complete("c", "the-state", "v", None).await.unwrap_err(),
        ProviderError::Unavailable
    );
    assert_eq!(
        provider.seen.lock().unwrap().len(),
        before,
        "no call while open"
    );

    let refusing = canned(vec![(
        "/token",
        (
            400,
            vec![],
            r#"{"error":"invalid_grant","error_code":"KOE320"}"#.into(),
        ),
    )])
    .await;
    let providers = crate::providers(Preset::Kakao, &refusing, "/v2/user/me");
    let p = providers.get("p").unwrap();
    for _ in 0..3 {
        assert_eq!(
            p.complete("c", "the-state", "v", None).await.unwrap_err(),
            ProviderError::Refused {
                code: "invalid_grant".into()
            }
        );
    }
    assert!(
        p.authorization(&[]).await.is_ok(),
        "refusals leave the breaker closed"
    );
}

#[tokio::test]
async fn a_refresh_posts_the_refresh_grant() {
    let provider = canned(vec![(
        "/token",
        ok(r#"{"access_token":"new-at","refresh_token":"new-rt","expires_in":3600}"#),
    )])
    .await;
    let providers = providers(Preset::Kakao, &provider, "/v2/user/me");
    let tokens = providers.get("p").unwrap().refresh("old-rt").await.unwrap();
    assert_eq!(tokens.access_token, "new-at");
    let form = provider.seen("/token").form();
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["refresh_token"], "old-rt");
    assert_eq!(form["client_secret"], "the-secret");
}
