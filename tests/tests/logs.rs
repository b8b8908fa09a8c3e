//! No secret reaches a log line, whatever the level. A test binary of its own: it
//! installs a process-wide subscriber at TRACE that records every line. The test
//! runs once per back end; the two halves take turns, and each reads only the
//! lines written during its own turn.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Everything recorded from byte `start` on.
    fn text_since(&self, start: usize) -> String {
        String::from_utf8(self.0.lock().unwrap()[start..].to_vec()).unwrap()
    }
}

/// The process-wide recorder, installed by whichever test comes first.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(captured.clone())
            .init();
        captured
    })
}

/// One back end at a time, so that a turn's lines are its own server's.
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

e2e! { async fn no_secret_reaches_a_log_line_at_any_level(backend) {
    let _turn = TURNS.lock().await;
    let captured = captured();
    let start = captured.len();

    // The chain signer runs too (every second), so its lines are recorded.
    let mut app = spawn_app_on_with(backend, |s| {
        s.audit.checkpoint_interval = Some(std::time::Duration::from_secs(1));
        s.email_flows.login = true;
        s.email_flows.interval = std::time::Duration::ZERO;
    })
    .await;
    let email = "logged@example.com";
    assert_eq!(
        app.register(email, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let wrong = "a wrong password that must not be logged";
    app.login(email, wrong).await;
    let tokens = app.tokens(app.login(email, PASSWORD).await).await;
    let refreshed = app.tokens(app.refresh(&tokens.refresh_token).await).await;
    app.refresh(&tokens.refresh_token).await; // reuse
    app.validate(&refreshed.access_token).await;
    app.me(&refreshed.access_token).await;
    app.post(
        "/v1/auth/register",
        &json!({"email": "x@y.z", "password": 12345}),
    )
    .await;
    // Service accounts: the client secret, its hash, and the tokens it gets (from a
    // fresh session: the reuse above ended the first one).
    let owner = app.tokens(app.login(email, PASSWORD).await).await;
    let org = body(
        app.call(
            reqwest::Method::POST,
            "/v1/organizations",
            Some(&owner.access_token),
            Some(&json!({"slug": "logged-org", "name": "Logged"})),
        )
        .await,
    )
    .await["organization_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = body(
        app.call(
            reqwest::Method::POST,
            &format!("/v1/organizations/{org}/service-accounts"),
            Some(&owner.access_token),
            Some(&json!({"name": "worker", "roles": ["auditor"]})),
        )
        .await,
    )
    .await;
    let client_id = created["client_id"].as_str().unwrap().to_owned();
    let client_secret = created["client_secret"].as_str().unwrap().to_owned();
    let grant = |secret: String| {
        let request = json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret});
        let app = &app;
        async move { app.post("/v1/auth/token", &request).await }
    };
    let service_token = body(grant(client_secret.clone()).await).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    grant(format!("{client_secret}-wrong")).await;
    app.post(
        "/v1/auth/authorize",
        &json!({"token": service_token, "organization_id": org, "permission": "audit:read"}),
    )
    .await;
    let secret_hash = keyledger_commands::ClientSecret::parse(&client_secret)
        .unwrap()
        .hash();
    let secret_hash = serde_json::to_value(secret_hash)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    // Erasure: the password re-entered, the data key read and destroyed.
    let leaving = "leaving@example.com";
    let leaving_id: uuid::Uuid = body(app.register(leaving, PASSWORD).await).await["user_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The key in clear, as the write side holds it (the store holds it wrapped).
    let clear_data_key = keyledger_commands::PersonalDataSealer::for_storage(
        &app.state.storage,
        app.state.data_key_wrapping.clone(),
    )
    .key_for(leaving_id)
    .await
    .unwrap()
    .unwrap()
    .expose_bytes()
    .to_vec();
    let wrapping_key = app.state.data_key_wrapping.current().encode();
    let leaving_tokens = app.tokens(app.login(leaving, PASSWORD).await).await;
    let db = app.db();
    let data_key: Vec<u8> = db
        .scalar(
            "SELECT key FROM user_data_keys WHERE key IS NOT NULL LIMIT 1",
            &[],
        )
        .await;
    let digests: Vec<Vec<u8>> = db.scalars("SELECT digest FROM email_claims", &[]).await;
    let erased = app
        .call(
            reqwest::Method::DELETE,
            "/v1/users/me",
            Some(&leaving_tokens.access_token),
            Some(&json!({ "password": PASSWORD })),
        )
        .await;
    assert_eq!(erased.status(), StatusCode::NO_CONTENT);
    app.logout(&refreshed.access_token).await;
    // A mailed link (the server writes mails as files here): the token in it,
    // the new password set through it, and a forged token tried.
    let reset_password = "a new horse, reset by mail";
    assert_eq!(
        app.post("/v1/auth/forgot-password", &json!({ "email": email })).await.status(),
        StatusCode::ACCEPTED
    );
    let outbox = app.resources.data_dir.join("outbox");
    let mail_token = mailed_token(&outbox, "/reset-password?token=").await;
    // One character of the MAC changed (the last one carries only two bits, so
    // it is left alone).
    let mut forged_token = mail_token.clone().into_bytes();
    let at = forged_token.len() - 2;
    forged_token[at] = if forged_token[at] == b'A' { b'B' } else { b'A' };
    let forged_token = String::from_utf8(forged_token).unwrap();
    app.post(
        "/v1/auth/reset-password",
        &json!({ "token": forged_token, "password": reset_password }),
    )
    .await;
    let reset = app
        .post(
            "/v1/auth/reset-password",
            &json!({ "token": mail_token, "password": reset_password }),
        )
        .await;
    let reset_status = reset.status();
    assert_eq!(reset_status, StatusCode::NO_CONTENT, "{}", reset.text().await.unwrap());
    // A sign-in mail: a wrong code tried, then its code, then its (used) link.
    assert_eq!(
        app.post("/v1/auth/email-login", &json!({ "email": email })).await.status(),
        StatusCode::ACCEPTED
    );
    let sign_in_token = mailed_token(&outbox, "/email-login?token=").await;
    let sign_in_code = mailed_code(&outbox).await;
    let wrong_code = format!("{:06}", (sign_in_code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let verify = "/v1/auth/email-login/verify";
    app.post(verify, &json!({ "email": email, "code": wrong_code })).await;
    let signed_in = app.post(verify, &json!({ "email": email, "code": sign_in_code })).await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    app.post(verify, &json!({ "token": sign_in_token })).await;
    // Second factors: an app's secret and codes, backup codes, the mfa_token, and an
    // SMS method's number and code (written to the embedded outbox).
    let fresh = app.tokens(app.login(email, reset_password).await).await;
    let call = |path: &'static str, token: Option<String>, body: serde_json::Value| {
        let app = &app;
        async move {
            body_of(app.call(reqwest::Method::POST, path, token.as_deref(), Some(&body)).await).await
        }
    };
    let setup = call("/v1/mfa/setup", Some(fresh.access_token.clone()), json!({"type": "totp"})).await;
    let totp_secret = setup["secret"].as_str().unwrap().to_owned();
    let method = setup["method_id"].as_str().unwrap().to_owned();
    // Set up before the app is confirmed: afterwards it would need a step-up.
    let sms = call("/v1/mfa/setup", Some(fresh.access_token.clone()), json!({"type": "sms", "phone": "+15551234567"})).await;
    assert!(sms["method_id"].is_string(), "{sms}");
    let confirm_code = keyledger_e2e::totp::code_now(&totp_secret);
    let confirm_path: &'static str = Box::leak(format!("/v1/mfa/methods/{method}/confirm").into_boxed_str());
    let confirmed = call(confirm_path, Some(fresh.access_token.clone()), json!({"code": confirm_code})).await;
    let backup: Vec<String> = confirmed["backup_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    let waiting = call("/v1/auth/login", None, json!({"email": email, "password": reset_password})).await;
    let mfa_token = waiting["mfa_token"].as_str().unwrap().to_owned();
    call("/v1/mfa/verify", None, json!({"mfa_token": mfa_token, "code": "000000"})).await;
    let second = call("/v1/mfa/verify", None, json!({"mfa_token": mfa_token, "code": backup[0]})).await;
    assert!(second["access_token"].is_string(), "{second}");
    // Until this server's signer has logged one of the checkpoints it stored.
    let mut signer_logged = false;
    for _ in 0..100 {
        let signed: Vec<Vec<u8>> = db.scalars("SELECT log_hash FROM chain_checkpoints", &[]).await;
        let text = captured.text_since(start);
        if signed.iter().any(|h| text.contains(&hex::encode(h))) {
            signer_logged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(db);
    app.stop().await;

    let text = captured.text_since(start);
    assert!(text.contains("request_id"), "request ids are logged");
    assert!(text.contains("signed chain checkpoint"), "the signer ran");
    assert!(signer_logged, "this server's signer logged what it signed");
    let hash = |t: &str| {
        let h = keyledger_commands::RefreshToken::parse(t).unwrap().hash();
        serde_json::to_value(h)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    let secrets = [
        PASSWORD.to_owned(),
        wrong.to_owned(),
        tokens.refresh_token.clone(),
        refreshed.refresh_token.clone(),
        tokens.access_token.clone(),
        refreshed.access_token.clone(),
        hash(&tokens.refresh_token),
        hash(&refreshed.refresh_token),
        app.resources.signing_key.clone(),
        app.resources.audit_key.clone(),
        client_secret.clone(),
        secret_hash,
        service_token.clone(),
        owner.access_token.clone(),
        owner.refresh_token.clone(),
        "$argon2id$".to_owned(),
        app.resources.email_index_key.clone(),
        hex::encode(&data_key),
        base64_url(&data_key),
        format!("{:?}", data_key),
        hex::encode(&clear_data_key),
        base64_url(&clear_data_key),
        format!("{:?}", clear_data_key),
        wrapping_key,
        mail_token.clone(),
        forged_token.clone(),
        reset_password.to_owned(),
        sign_in_token.clone(),
        totp_secret.clone(),
        mfa_token.clone(),
        "+15551234567".to_owned(),
        "5551234567".to_owned(),
    ];
    let secrets = secrets
        .into_iter()
        .chain(backup.iter().cloned())
        .chain(digests.iter().flat_map(|d| [hex::encode(d), base64_url(d)]))
        .collect::<Vec<_>>();
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret reached the logs");
    }
    // Six digits may occur by chance inside a timestamp or an id: a code is
    // looked for as a value of its own.
    for code in [&sign_in_code, &wrong_code, &confirm_code] {
        for shape in [format!("\"{code}\""), format!("={code}"), format!(" {code}")] {
            assert!(!text.contains(&shape), "a sign-in code reached the logs");
        }
    }
}}

async fn body_of(response: reqwest::Response) -> serde_json::Value {
    serde_json::from_str(&response.text().await.unwrap()).unwrap_or(serde_json::Value::Null)
}

/// The text of the first mail written to `outbox` that contains `marker`.
async fn mailed_text(outbox: &std::path::Path, marker: &str) -> String {
    for _ in 0..300 {
        let mails = std::fs::read_dir(outbox)
            .into_iter()
            .flatten()
            .map_while(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "eml"));
        for entry in mails {
            let mail =
                keyledger_e2e::smtp::parse_mail(&std::fs::read(entry.path()).unwrap()).unwrap();
            if mail.text.contains(marker) {
                return mail.text;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no mail with {marker} in {}", outbox.display());
}

/// The token of the first mailed link to `path` (`/reset-password?token=`).
async fn mailed_token(outbox: &std::path::Path, path: &str) -> String {
    let text = mailed_text(outbox, path).await;
    let start = text.find(path).unwrap() + path.len();
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect()
}

/// The code of the first sign-in mail (the line that holds only six digits).
async fn mailed_code(outbox: &std::path::Path) -> String {
    let text = mailed_text(outbox, "/email-login?token=").await;
    text.lines()
        .map(str::trim)
        .find(|line| line.len() == 6 && line.bytes().all(|b| b.is_ascii_digit()))
        .expect("a code in the sign-in mail")
        .to_owned()
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
