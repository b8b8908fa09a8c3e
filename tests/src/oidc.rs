//! Identity providers on loopback for the social-login tests: [`TestProvider`], a
//! real OpenID provider (oidc-provider, which we did not write, so the server's
//! OIDC client is tested against someone else's implementation), and
//! [`SocialProviders`], Kakao's and Naver's documented endpoints. Both are Node
//! scripts in tests/oidc, started once per test (each gets its own port, client
//! and state) and killed when dropped. [`follow_until`] plays the browser.
//!
//! Node and the pinned packages are required: a missing one fails the test,
//! naming the installer. Nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use url::Url;

const INSTALL: &str = "run `bash .ci/install-oidc-provider` (or `.ci/test`, which does)";

/// How long a script may take to print its first line (oidc-provider starts in
/// about a second; a loaded CI machine gets room).
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The folder of the scripts: `$KEYLEDGER_TEST_OIDC`, else the repository's
/// tests/oidc once its packages are installed. Panics, naming the installer,
/// when neither is there.
fn scripts_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc");
        match std::env::var_os("KEYLEDGER_TEST_OIDC") {
            Some(path) => PathBuf::from(path),
            None if repository.join("node_modules/oidc-provider").is_dir() => repository,
            None => panic!(
                "oidc-provider is required for the social-login tests: KEYLEDGER_TEST_OIDC is \
                 not set and {} does not exist; {INSTALL}",
                repository.join("node_modules/oidc-provider").display()
            ),
        }
    })
}

/// A random value for a client id or secret, so no test leans on fixed
/// credentials.
fn random(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A running Node script: killed when dropped (and its stdin, whose end makes
/// the script exit by itself, closes too).
struct Script {
    name: &'static str,
    _child: Child,
    _stdin: ChildStdin,
    /// What it wrote to stderr (the latest 64 KiB at most), as bytes: a read may
    /// end inside a UTF-8 character.
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Script {
    /// Starts `node <name>` with `env` and returns it with its first stdout line
    /// as JSON.
    async fn start(name: &'static str, env: &[(&str, &str)]) -> (Script, Value) {
        let dir = scripts_dir();
        let mut child = Command::new("node")
            .arg(name)
            .current_dir(dir)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("node is required to run {name} ({e}); {INSTALL}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        // Kept, not shown: oidc-provider warns on every start. A failure shows it.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let collector = collect(child.stderr.take().expect("piped stderr"), stderr.clone());

        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            outcome => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(2), collector).await;
                let why = match outcome {
                    Err(_) => format!("printed nothing within {START_TIMEOUT:?}"),
                    Ok(Err(e)) => format!("could not be read ({e})"),
                    _ => "exited before printing its address".to_owned(),
                };
                let stderr = String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
                panic!(
                    "{}/{name} {why}; its stderr:\n{stderr}\n({INSTALL})",
                    dir.display()
                );
            }
        };
        let first: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{name}'s first line is not JSON ({e}): {line}"));
        // The rest of stdout is never read; it is drained so a stray write
        // cannot block the script on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let script = Script {
            name,
            _child: child,
            _stdin: stdin,
            stderr,
        };
        (script, first)
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr")).into_owned()
    }
}

fn collect(mut from: tokio::process::ChildStderr, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = from.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            let mut kept = into.lock().expect("stderr");
            kept.extend_from_slice(&buffer[..n]);
            // The latest 64 KiB are plenty to explain a failure.
            let excess = kept.len().saturating_sub(64 * 1024);
            kept.drain(..excess);
        }
    })
}

/// The control endpoints' client: plain JSON, no cookies, no redirects.
fn control_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("control client")
}

impl Script {
    /// Sends a control request; panics, with the script's stderr, unless it
    /// answered `expected`.
    async fn control(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
        expected: StatusCode,
    ) -> reqwest::Response {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} {what}: {e}\n{}", self.name, self.stderr()));
        if response.status() != expected {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            panic!(
                "{} {what} answered {status} {body}; its stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
        response
    }

    /// A control request that changes something (answered 204).
    async fn change(&self, request: reqwest::RequestBuilder, what: &str) {
        self.control(request, what, StatusCode::NO_CONTENT).await;
    }
}

/// A real OpenID provider on `127.0.0.1` (oidc-provider 9.13.3, tests/oidc/provider.mjs)
/// with one confidential client: [`Self::client_id`] and [`Self::client_secret`]
/// (client_secret_basic; authorization code with PKCE S256, which it requires,
/// and refresh tokens; scopes `openid email profile offline_access`; a refresh
/// token needs `offline_access` and `prompt=consent`).
///
/// Discovery is at `{issuer}/.well-known/openid-configuration`; the endpoints are
/// `/auth`, `/token`, `/me` (userinfo) and `/jwks`. A login needs no page: the
/// account is the authorization request's `login_hint`, consent is granted, and
/// [`follow_until`] with a [`browser_client`] ends at the redirect URI with
/// `code`, `state` and `iss`. The ID token carries `email`, `email_verified`,
/// `name` (per scope) and the account's `amr` as well as userinfo does.
pub struct TestProvider {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    http: reqwest::Client,
    script: Script,
}

impl TestProvider {
    /// Starts a provider of this test's own, with a random client id and secret,
    /// no accounts and no allowed redirect URI.
    pub async fn start() -> TestProvider {
        let client_id = random("client");
        let client_secret = random("secret");
        let (script, first) = Script::start(
            "provider.mjs",
            &[("CLIENT_ID", &client_id), ("CLIENT_SECRET", &client_secret)],
        )
        .await;
        let issuer = first["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("provider.mjs printed no issuer: {first}"))
            .to_owned();
        TestProvider {
            issuer,
            client_id,
            client_secret,
            http: control_client(),
            script,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/__test/{path}", self.issuer)
    }

    /// Adds (or replaces) the account a `login_hint` of `id` logs in:
    /// `claims` is `{sub?, email, email_verified, name, amr?}`; `sub` defaults
    /// to `id`, and `amr` (say `["pwd", "otp"]`) goes into the ID token.
    pub async fn add_account(&self, id: &str, claims: Value) {
        let url = self.url(&format!("accounts/{}", encode_segment(id)));
        let request = self.http.put(url).json(&claims);
        self.script.change(request, "PUT accounts").await;
    }

    /// The exact redirect URIs the client may use from now on (the server
    /// under test binds its port after this provider started).
    pub async fn allow_redirect_uris(&self, uris: &[String]) {
        let request = self.http.put(self.url("redirect_uris")).json(uris);
        self.script.change(request, "PUT redirect_uris").await;
    }

    /// Rewrites (and re-signs) the ID token of every following token response:
    /// `Some("aud")` another audience, `"azp"` an extra audience and that as
    /// `azp`, `"expired"` exp and iat an hour ago, `"iat_future"` iat an hour
    /// ahead, `"nonce"` another nonce, `"iss"` another issuer, `"foreign_key"`
    /// signed by a key not in the JWKS under the real key's kid; `None` stops.
    pub async fn tamper(&self, mode: Option<&str>) {
        let request = self
            .http
            .put(self.url("tamper"))
            .json(&json!({ "id_token": mode }));
        self.script.change(request, "PUT tamper").await;
    }

    /// Replaces the signing key with a new one under a new kid: ID tokens are
    /// signed with it from now on and the JWKS publishes it alone, so a party
    /// that cached the old set meets an unknown kid.
    pub async fn rotate_key(&self) {
        let request = self.http.post(self.url("rotate"));
        self.script.change(request, "POST rotate").await;
    }

    /// While `down`, every request but the control endpoints answers 503.
    pub async fn outage(&self, down: bool) {
        let request = self.http.put(self.url("outage")).json(&down);
        self.script.change(request, "PUT outage").await;
    }

    /// How many requests (other than the control endpoints) it received,
    /// those answered 503 during an outage included.
    pub async fn request_count(&self) -> u64 {
        let request = self.http.get(self.url("requests"));
        let response = self
            .script
            .control(request, "GET requests", StatusCode::OK)
            .await;
        let body: Value = response.json().await.expect("requests is JSON");
        body["count"].as_u64().expect("a count")
    }
}

/// Kakao's and Naver's login endpoints on `127.0.0.1` (tests/oidc/social.mjs),
/// each under a prefix standing for its hosts:
/// `{base}/kakao/oauth/authorize`, `{base}/kakao/oauth/token`,
/// `{base}/kakao/v2/user/me`; `{base}/naver/oauth2.0/authorize`,
/// `{base}/naver/oauth2.0/token`, `{base}/naver/v1/nid/me`.
///
/// A login needs no page: append `test_user=<name>` (a user added here) to the
/// authorize URL the server sent, or `test_deny=1` for a user who refuses, and
/// the authorize endpoint redirects straight back with `code` and `state` (or
/// the provider's `error`). Codes are single-use and live 60 s; Kakao enforces
/// PKCE when the authorize request carried a `code_challenge`.
pub struct SocialProviders {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub base: String,
    /// Kakao's REST API key (its `client_id`).
    pub kakao_client_id: String,
    pub kakao_client_secret: String,
    pub naver_client_id: String,
    pub naver_client_secret: String,
    http: reqwest::Client,
    script: Script,
}

impl SocialProviders {
    /// Starts both of this test's own, with random client credentials, no users
    /// and no allowed redirect URI.
    pub async fn start() -> SocialProviders {
        let kakao_client_id = random("kakao");
        let kakao_client_secret = random("kakao-secret");
        let naver_client_id = random("naver");
        let naver_client_secret = random("naver-secret");
        let (script, first) = Script::start(
            "social.mjs",
            &[
                ("KAKAO_CLIENT_ID", &kakao_client_id),
                ("KAKAO_CLIENT_SECRET", &kakao_client_secret),
                ("NAVER_CLIENT_ID", &naver_client_id),
                ("NAVER_CLIENT_SECRET", &naver_client_secret),
            ],
        )
        .await;
        let base = first["base"]
            .as_str()
            .unwrap_or_else(|| panic!("social.mjs printed no base: {first}"))
            .to_owned();
        SocialProviders {
            base,
            kakao_client_id,
            kakao_client_secret,
            naver_client_id,
            naver_client_secret,
            http: control_client(),
            script,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/__test/{path}", self.base)
    }

    async fn add_user(&self, provider: &str, name: &str, profile: Value) {
        let url = self.url(&format!("users/{provider}/{}", encode_segment(name)));
        let request = self.http.put(url).json(&profile);
        self.script.change(request, "PUT users").await;
    }

    /// Adds (or replaces) the Kakao user `test_user=<name>` logs in:
    /// `{id: int64, nickname, email, is_email_valid, is_email_verified}`
    /// (an id beyond 2^53 keeps every digit).
    pub async fn add_kakao_user(&self, name: &str, profile: Value) {
        self.add_user("kakao", name, profile).await;
    }

    /// Adds (or replaces) the Naver user `test_user=<name>` logs in:
    /// `{id: string, email, nickname, name}`.
    pub async fn add_naver_user(&self, name: &str, profile: Value) {
        self.add_user("naver", name, profile).await;
    }

    /// The exact redirect URIs both providers accept from now on.
    pub async fn allow_redirect_uris(&self, uris: &[String]) {
        let request = self.http.put(self.url("redirect_uris")).json(uris);
        self.script.change(request, "PUT redirect_uris").await;
    }

    /// How many requests (other than the control endpoints) both received.
    pub async fn request_count(&self) -> u64 {
        self.counts().await["count"].as_u64().expect("a count")
    }

    /// Sets how long `provider`'s (`kakao` or `naver`) new access tokens live.
    pub async fn set_access_ttl(&self, provider: &str, seconds: u64) {
        let request = self
            .http
            .put(self.url("access_ttl"))
            .json(&json!({ provider: seconds }));
        self.script.change(request, "PUT access_ttl").await;
    }

    /// How many requests one provider (`"kakao"` or `"naver"`) received.
    pub async fn request_count_of(&self, provider: &str) -> u64 {
        self.counts().await[provider]
            .as_u64()
            .unwrap_or_else(|| panic!("no provider {provider}"))
    }

    async fn counts(&self) -> Value {
        let request = self.http.get(self.url("requests"));
        let response = self
            .script
            .control(request, "GET requests", StatusCode::OK)
            .await;
        response.json().await.expect("requests is JSON")
    }
}

/// `value` as one URL path segment.
fn encode_segment(value: &str) -> String {
    let mut url = Url::parse("http://x/").expect("url");
    url.path_segments_mut().expect("base").push(value);
    url.path().trim_start_matches('/').to_owned()
}

/// A client that behaves like a browser for [`follow_until`]: it keeps cookies
/// (oidc-provider's interactions need them) and follows no redirect itself.
pub fn browser_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("browser client")
}

/// Plays the browser: GETs `start` with `client` and follows each redirect's
/// `Location` (a relative one joined to the URL it came from) until one starts
/// with `stop_prefix`, which it returns without requesting it (it is typically
/// the server's callback, for the test to call itself). Panics with the status
/// and body if something other than a redirect answers first, or after 20 hops.
pub async fn follow_until(client: &reqwest::Client, start: &str, stop_prefix: &str) -> Url {
    let mut url = Url::parse(start).unwrap_or_else(|e| panic!("{start} is not a URL: {e}"));
    for _ in 0..20 {
        let response = client
            .get(url.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let location = match location {
            Some(location) if status.is_redirection() => location,
            _ => {
                let body = response.text().await.unwrap_or_default();
                panic!("GET {url} answered {status} before a redirect to {stop_prefix}: {body}");
            }
        };
        let next = url
            .join(&location)
            .unwrap_or_else(|e| panic!("GET {url} redirected to {location:?}, not a URL: {e}"));
        if next.as_str().starts_with(stop_prefix) {
            return next;
        }
        url = next;
    }
    panic!("20 redirects from {start} and none to {stop_prefix}");
}

/// The harness itself, against the real scripts: what the social-login tests
/// build on holds before they do.
/// An app signing in to Keyledger's own OpenID provider with the relying-party
/// library openid-client (tests/oidc/relying_party.mjs), which we did not write,
/// and checking tokens with jose from the published JWKS only. The test plays
/// the browser between its steps; [`Self::call`] sends one operation and returns
/// its answer (`{"error": …}` when the library or the server refused).
pub struct RelyingParty {
    /// The provider's metadata as the library's discovery read it.
    pub metadata: Value,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    _child: Child,
}

/// How a [`RelyingParty`] is registered.
pub struct RelyingPartyClient<'a> {
    pub client_id: &'a str,
    /// `None` for a public client.
    pub secret: Option<&'a str>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub auth_method: &'a str,
    pub redirect_uri: &'a str,
    /// The client's `id_token_alg` (`RS256`, `EdDSA`, `ES256`).
    pub id_token_alg: &'a str,
}

impl RelyingParty {
    /// Starts the app against the provider at `issuer` (discovery happens here).
    pub async fn start(issuer: &str, client: RelyingPartyClient<'_>) -> RelyingParty {
        let dir = scripts_dir();
        let mut command = Command::new("node");
        command
            .arg("relying_party.mjs")
            .current_dir(dir)
            .env("ISSUER", issuer)
            .env("CLIENT_ID", client.client_id)
            .env("AUTH_METHOD", client.auth_method)
            .env("REDIRECT_URI", client.redirect_uri)
            .env("ID_TOKEN_ALG", client.id_token_alg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(secret) = client.secret {
            command.env("CLIENT_SECRET", secret);
        }
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("node is required to run relying_party.mjs ({e}); {INSTALL}")
        });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stderr.take().expect("piped stderr"), stderr.clone());
        let mut party = RelyingParty {
            metadata: Value::Null,
            stdin,
            lines: BufReader::new(stdout).lines(),
            stderr,
            _child: child,
        };
        let first = party.next_line("discovery").await;
        party.metadata = first["metadata"].clone();
        assert!(
            party.metadata.is_object(),
            "discovery failed: {first}\n{}",
            party.stderr()
        );
        party
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr")).into_owned()
    }

    async fn next_line(&mut self, what: &str) -> Value {
        let line = tokio::time::timeout(START_TIMEOUT, self.lines.next_line()).await;
        let line = match line {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "relying_party.mjs gave no answer to {what} ({other:?}); its stderr:\n{}\n({INSTALL})",
                self.stderr()
            ),
        };
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("relying_party.mjs answered {what} with no JSON ({e}): {line}")
        })
    }

    /// Runs operation `op` with `input` (see relying_party.mjs) and returns its
    /// answer.
    pub async fn call(&mut self, op: &str, input: Value) -> Value {
        use tokio::io::AsyncWriteExt;
        let mut request = input;
        request["op"] = json!(op);
        let mut line = request.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("relying_party.mjs stopped ({e}): {}", self.stderr()));
        self.next_line(op).await
    }

    /// [`Self::call`], panicking with the answer unless it succeeded.
    pub async fn ok(&mut self, op: &str, input: Value) -> Value {
        let answer = self.call(op, input).await;
        assert!(
            answer.get("error").is_none(),
            "{op} failed: {answer}\n{}",
            self.stderr()
        );
        answer
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use sha2::{Digest, Sha256};

    use super::*;

    const CALLBACK: &str = "http://127.0.0.1:9/callback";

    fn param(url: &Url, name: &str) -> Option<String> {
        url.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    /// A code-flow login of `account` with PKCE, exchanged at the token endpoint.
    async fn sign_in(provider: &TestProvider, account: &str) -> Value {
        let verifier = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let mut authorize = Url::parse(&format!("{}/auth", provider.issuer)).expect("url");
        authorize
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &provider.client_id)
            .append_pair("redirect_uri", CALLBACK)
            .append_pair("scope", "openid email profile")
            .append_pair("state", "the-state")
            .append_pair("nonce", "the-nonce")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("login_hint", account);
        let back = follow_until(&browser_client(), authorize.as_str(), CALLBACK).await;
        assert_eq!(param(&back, "state").as_deref(), Some("the-state"));
        assert_eq!(
            param(&back, "iss").as_deref(),
            Some(provider.issuer.as_str())
        );
        let code = param(&back, "code").expect("a code");
        let response = reqwest::Client::new()
            .post(format!("{}/token", provider.issuer))
            .basic_auth(&provider.client_id, Some(&provider.client_secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &verifier),
            ])
            .send()
            .await
            .expect("token endpoint");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("tokens")
    }

    fn id_token_part(tokens: &Value, index: usize) -> Value {
        let id_token = tokens["id_token"].as_str().expect("an ID token");
        let part = id_token.split('.').nth(index).expect("three parts");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
    }

    #[tokio::test]
    async fn a_login_at_the_test_provider_yields_an_id_token_with_the_accounts_claims() {
        let provider = TestProvider::start().await;
        provider
            .add_account(
                "alice",
                json!({"email": "alice@example.com", "email_verified": true,
                       "name": "Alice", "amr": ["pwd", "otp"]}),
            )
            .await;
        provider.allow_redirect_uris(&[CALLBACK.to_owned()]).await;

        let claims = id_token_part(&sign_in(&provider, "alice").await, 1);
        assert_eq!(claims["iss"], provider.issuer.as_str());
        assert_eq!(claims["aud"], provider.client_id.as_str());
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["nonce"], "the-nonce");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["email_verified"], true);
        assert_eq!(claims["amr"], json!(["pwd", "otp"]));

        provider.tamper(Some("aud")).await;
        let claims = id_token_part(&sign_in(&provider, "alice").await, 1);
        assert_eq!(claims["aud"], "someone-else");
        provider.tamper(None).await;

        let kid = |tokens: &Value| id_token_part(tokens, 0)["kid"].clone();
        let before = kid(&sign_in(&provider, "alice").await);
        provider.rotate_key().await;
        let after = kid(&sign_in(&provider, "alice").await);
        assert_ne!(before, after);
        let jwks: Value = reqwest::get(format!("{}/jwks", provider.issuer))
            .await
            .expect("jwks")
            .json()
            .await
            .expect("a key set");
        assert_eq!(jwks["keys"][0]["kid"], after);
        assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));

        provider.outage(true).await;
        let during = reqwest::get(format!("{}/jwks", provider.issuer))
            .await
            .expect("an answer");
        assert_eq!(during.status(), StatusCode::SERVICE_UNAVAILABLE);
        provider.outage(false).await;
        assert!(provider.request_count().await > 0);
    }

    #[tokio::test]
    async fn kakao_and_naver_logins_reach_the_callback_and_their_codes_buy_profiles() {
        let social = SocialProviders::start().await;
        social.allow_redirect_uris(&[CALLBACK.to_owned()]).await;
        // 2^53 + 1: an id a float would round.
        social
            .add_kakao_user(
                "kim",
                json!({"id": 9_007_199_254_740_993u64, "nickname": "kim",
                       "email": "kim@example.com", "is_email_valid": true,
                       "is_email_verified": true}),
            )
            .await;
        social
            .add_naver_user(
                "lee",
                json!({"id": "naver-lee", "email": "lee@example.com",
                       "nickname": "lee", "name": "Lee"}),
            )
            .await;
        let http = reqwest::Client::new();

        let authorize = format!(
            "{}/kakao/oauth/authorize?response_type=code&client_id={}&redirect_uri={}&state=k&test_user=kim",
            social.base, social.kakao_client_id, CALLBACK
        );
        let back = follow_until(&browser_client(), &authorize, CALLBACK).await;
        let tokens: Value = http
            .post(format!("{}/kakao/oauth/token", social.base))
            .form(&[
                ("grant_type", "authorization_code"),
                ("client_id", social.kakao_client_id.as_str()),
                ("client_secret", social.kakao_client_secret.as_str()),
                ("redirect_uri", CALLBACK),
                ("code", param(&back, "code").expect("a code").as_str()),
            ])
            .send()
            .await
            .expect("kakao token")
            .json()
            .await
            .expect("kakao tokens");
        let me = http
            .get(format!("{}/kakao/v2/user/me", social.base))
            .bearer_auth(tokens["access_token"].as_str().expect("an access token"))
            .send()
            .await
            .expect("kakao profile")
            .text()
            .await
            .expect("text");
        assert!(me.starts_with(r#"{"id":9007199254740993,"#), "{me}");

        let authorize = format!(
            "{}/naver/oauth2.0/authorize?response_type=code&client_id={}&redirect_uri={}&state=n&test_user=lee",
            social.base, social.naver_client_id, CALLBACK
        );
        let back = follow_until(&browser_client(), &authorize, CALLBACK).await;
        let tokens: Value = http
            .post(format!("{}/naver/oauth2.0/token", social.base))
            .form(&[
                ("grant_type", "authorization_code"),
                ("client_id", social.naver_client_id.as_str()),
                ("client_secret", social.naver_client_secret.as_str()),
                ("code", param(&back, "code").expect("a code").as_str()),
                ("state", "n"),
            ])
            .send()
            .await
            .expect("naver token")
            .json()
            .await
            .expect("naver tokens");
        assert_eq!(tokens["expires_in"], "3600");
        let me: Value = http
            .get(format!("{}/naver/v1/nid/me", social.base))
            .bearer_auth(tokens["access_token"].as_str().expect("an access token"))
            .send()
            .await
            .expect("naver profile")
            .json()
            .await
            .expect("JSON");
        assert_eq!(me["response"]["id"], "naver-lee");
        assert_eq!(social.request_count_of("kakao").await, 3);
        assert_eq!(social.request_count_of("naver").await, 3);
    }
}
