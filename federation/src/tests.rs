//! Configuration checks made by `Providers::new` (no network).

use super::*;

fn base() -> Url {
    Url::parse("https://auth.example.com/").unwrap()
}

fn config(name: &str, preset: Preset) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        preset,
        display_name: None,
        client_id: "client-1".into(),
        client_secret: Some(ClientSecret::new("s3cret".into())),
        scopes: None,
        issuer: None,
        authorize_url: None,
        token_url: None,
        userinfo_url: None,
        trust_mfa: false,
        keep_tokens: false,
    }
}

fn build(configs: Vec<ProviderConfig>) -> Result<Providers, ConfigError> {
    Providers::new(configs, FederationSettings::default(), &base())
}

fn url(s: &str) -> Option<Url> {
    Some(Url::parse(s).unwrap())
}

#[test]
fn presets_get_their_display_names_and_default_scopes() {
    let mut ms = config("ms", Preset::Microsoft);
    ms.issuer = url("https://login.microsoftonline.com/common/v2.0");
    let mut corp = config("corp-sso", Preset::Oidc);
    corp.issuer = url("https://sso.corp.example");
    let providers = build(vec![
        config("google", Preset::Google),
        ms,
        config("gh", Preset::Github),
        config("kakao", Preset::Kakao),
        config("naver", Preset::Naver),
        corp,
    ])
    .unwrap();
    let names: Vec<_> = providers.iter().map(|p| p.display_name()).collect();
    assert_eq!(
        names,
        [
            "Google",
            "Microsoft",
            "GitHub",
            "Kakao",
            "Naver",
            "corp-sso"
        ]
    );
    let scopes = |n: &str| providers.get(n).unwrap().scopes.join(" ");
    assert_eq!(scopes("google"), "openid email profile");
    assert_eq!(scopes("corp-sso"), "openid email profile");
    assert_eq!(scopes("gh"), "read:user user:email");
    assert_eq!(scopes("kakao"), "profile_nickname account_email");
    assert_eq!(scopes("naver"), "");
    assert!(providers.get("google").unwrap().is_oidc());
    assert!(!providers.get("gh").unwrap().is_oidc());
    assert_eq!(providers.get("gh").unwrap().preset(), Preset::Github);
    assert!(providers.get("nope").is_none());
    assert!(!providers.is_empty());
}

#[test]
fn an_explicit_display_name_and_scopes_win() {
    let mut c = config("google", Preset::Google);
    c.display_name = Some("Work account".into());
    c.scopes = Some(vec!["openid".into(), "email".into()]);
    c.trust_mfa = true;
    c.keep_tokens = true;
    let providers = build(vec![c]).unwrap();
    let p = providers.get("google").unwrap();
    assert_eq!(p.display_name(), "Work account");
    assert_eq!(p.scopes, ["openid", "email"]);
    assert!(p.trusts_mfa() && p.keeps_tokens());
}

#[test]
fn google_defaults_its_issuer_and_microsoft_and_oidc_need_one() {
    assert!(build(vec![config("google", Preset::Google)]).is_ok());
    assert_eq!(
        build(vec![config("ms", Preset::Microsoft)]).unwrap_err(),
        ConfigError::MissingIssuer("ms".into(), Preset::Microsoft)
    );
    assert_eq!(
        build(vec![config("corp", Preset::Oidc)]).unwrap_err(),
        ConfigError::MissingIssuer("corp".into(), Preset::Oidc)
    );
}

#[test]
fn the_callback_is_under_the_public_base() {
    let p = build(vec![config("gh", Preset::Github)]).unwrap();
    assert_eq!(
        p.get("gh").unwrap().callback_url().as_str(),
        "https://auth.example.com/v1/auth/oauth/gh/callback"
    );
    let with_path = Url::parse("https://example.com/auth").unwrap();
    let p = Providers::new(
        vec![config("gh", Preset::Github)],
        FederationSettings::default(),
        &with_path,
    )
    .unwrap();
    assert_eq!(
        p.get("gh").unwrap().callback_url().as_str(),
        "https://example.com/auth/v1/auth/oauth/gh/callback"
    );
}

#[test]
fn a_bad_name_is_refused() {
    for name in ["", "Google", "my_idp", "a/b", &"x".repeat(33)] {
        assert_eq!(
            build(vec![config(name, Preset::Github)]).unwrap_err(),
            ConfigError::BadName(name.into())
        );
    }
}

#[test]
fn a_duplicate_name_is_refused() {
    assert_eq!(
        build(vec![
            config("gh", Preset::Github),
            config("gh", Preset::Kakao)
        ])
        .unwrap_err(),
        ConfigError::DuplicateName("gh".into())
    );
}

#[test]
fn endpoints_must_be_https_unless_on_loopback() {
    for ok in [
        "http://127.0.0.1:8080/token",
        "http://[::1]:8080/token",
        "http://localhost:8080/token",
        "https://kauth.example/token",
    ] {
        let mut c = config("kakao", Preset::Kakao);
        c.token_url = url(ok);
        assert!(build(vec![c]).is_ok(), "{ok}");
    }
    let mut c = config("kakao", Preset::Kakao);
    c.userinfo_url = url("http://example.com/me");
    assert!(matches!(
        build(vec![c]).unwrap_err(),
        ConfigError::NotHttps {
            what: "userinfo_url",
            ..
        }
    ));
    let mut c = config("corp", Preset::Oidc);
    c.issuer = url("http://sso.example.com");
    assert!(matches!(
        build(vec![c]).unwrap_err(),
        ConfigError::NotHttps { what: "issuer", .. }
    ));
    let mut c = config("corp", Preset::Oidc);
    c.issuer = url("http://127.0.0.1:4000");
    assert!(build(vec![c]).is_ok());
}

#[test]
fn the_callback_must_be_https_unless_on_loopback() {
    let settings = FederationSettings::default;
    let plain = Url::parse("http://auth.example.com").unwrap();
    assert!(matches!(
        Providers::new(vec![config("gh", Preset::Github)], settings(), &plain).unwrap_err(),
        ConfigError::CallbackNotHttps { .. }
    ));
    for local in [
        "http://127.0.0.1:8080",
        "http://[::1]:8080",
        "http://localhost:8080/",
    ] {
        let local = Url::parse(local).unwrap();
        assert!(
            Providers::new(vec![config("gh", Preset::Github)], settings(), &local).is_ok(),
            "{local}"
        );
    }
}

#[test]
fn endpoint_overrides_are_refused_on_oidc_presets() {
    let mut c = config("google", Preset::Google);
    c.token_url = url("https://evil.example/token");
    assert!(matches!(
        build(vec![c]).unwrap_err(),
        ConfigError::OverrideOnOidc {
            what: "token_url",
            ..
        }
    ));
}

#[test]
fn an_issuer_is_refused_on_oauth_presets() {
    let mut c = config("gh", Preset::Github);
    c.issuer = url("https://github.com");
    assert_eq!(
        build(vec![c]).unwrap_err(),
        ConfigError::IssuerNotAllowed("gh".into(), Preset::Github)
    );
}

#[test]
fn errors_name_the_provider() {
    let err = build(vec![config("ms", Preset::Microsoft)]).unwrap_err();
    assert!(err.to_string().contains("`ms`"), "{err}");
}

#[test]
fn debug_of_a_provider_config_hides_the_secret() {
    let c = config("gh", Preset::Github);
    assert!(!format!("{c:?}").contains("s3cret"));
    let p = build(vec![c]).unwrap();
    assert!(!format!("{:?}", p.get("gh").unwrap()).contains("s3cret"));
}

#[tokio::test]
async fn oauth_authorization_carries_every_parameter() {
    let p = build(vec![config("gh", Preset::Github)]).unwrap();
    let gh = p.get("gh").unwrap();
    let a = gh
        .authorization(&[("login_hint", "octocat"), ("prompt", "select_account")])
        .await
        .unwrap();
    assert!(a
        .url
        .as_str()
        .starts_with("https://github.com/login/oauth/authorize?"));
    let q: std::collections::HashMap<_, _> = a.url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "client-1");
    assert_eq!(q["redirect_uri"], gh.callback_url().as_str());
    assert_eq!(q["scope"], "read:user user:email");
    assert_eq!(q["state"], a.state);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["login_hint"], "octocat");
    assert_eq!(q["prompt"], "select_account");
    assert!(a.nonce.is_none());
    // 32 random bytes, base64url without padding: 43 characters.
    assert_eq!(a.state.len(), 43);
    assert!(a
        .state
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(a.pkce_verifier.len() >= 43);
    assert!(!q.values().any(|v| v == &a.pkce_verifier));
    let again = gh.authorization(&[]).await.unwrap();
    assert_ne!(again.state, a.state);
    assert_ne!(again.pkce_verifier, a.pkce_verifier);
}

#[tokio::test]
async fn an_unreachable_provider_opens_its_breaker_then_fails_fast() {
    // Port 9 on loopback (discard) is closed here: connection refused, quickly.
    let mut c = config("kakao", Preset::Kakao);
    c.token_url = url("http://127.0.0.1:9/token");
    let settings = FederationSettings {
        breaker_failures: 2,
        ..FederationSettings::default()
    };
    let p = Providers::new(vec![c], settings, &base()).unwrap();
    let kakao = p.get("kakao").unwrap();
    for _ in 0..2 {
        assert_eq!(
            kakao
                .complete("code", "the-state", "verifier", None)
                .await
                .unwrap_err(),
            ProviderError::Unavailable
        );
    }
    assert!(kakao.breaker.is_open());
    assert_eq!(
        kakao.authorization(&[]).await.unwrap_err(),
        ProviderError::Unavailable
    );
}

/// The server runs these on a multi-threaded runtime: their futures must be `Send`.
#[test]
fn provider_calls_are_send() {
    fn send<T: Send>(_: &T) {}
    let mut c = config("corp", Preset::Oidc);
    c.issuer = url("https://sso.example.com");
    let providers = build(vec![c]).unwrap();
    let p = providers.get("corp").unwrap();
    send(&p.authorization(&[]));
    send(&p.complete("c", "the-state", "v", Some("n")));
    send(&p.accepts_callback_issuer(None));
    send(&p.refresh("r"));
    fn shared<T: Send + Sync + Clone>(_: &T) {}
    shared(&providers);
}
