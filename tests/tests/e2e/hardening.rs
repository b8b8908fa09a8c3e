//! What every request and answer goes through whatever the route: compressed bodies
//! are refused unread, metric labels stay bounded, security headers are on every
//! answer, and the docs page runs nothing from elsewhere (or is off).

use base64::Engine;
use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::Digest;

/// The peak resident memory of this process (`VmHWM`, KiB). The server under test
/// runs in this process, so whatever it allocates shows here.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Bytes a decompression bomb inflates to: far more than any test allocates, so
/// inflating even one would show in the peak RSS.
const BOMB_INFLATED: u64 = 400 << 20;

/// A real zstd bomb: a valid zstd frame of 400 MiB of zeros, about 13 KB long
/// (the size the review sent: under the default body limit).
fn zstd_bomb() -> Vec<u8> {
    let mut compressed = Vec::new();
    let mut zeros = std::io::Read::take(std::io::repeat(0), BOMB_INFLATED);
    zstd::stream::copy_encode(&mut zeros, &mut compressed, 19).expect("zstd");
    compressed
}

e2e! {
/// A 13 KB zstd body made the server allocate about 400 MiB before the body limit
/// was checked (actix-web inflated each chunk in full). Now any `Content-Encoding`
/// but `identity` is refused with 415 before a byte is read, and the server's memory
/// stays flat under four bombs at once.
multi_thread async fn compressed_bodies_are_refused_without_being_inflated(backend) {
    let app = spawn_app_on(backend).await;
    let bomb = zstd_bomb();
    assert!(
        bomb.len() < app.settings.server.max_body_bytes,
        "the bomb fits the body limit: {} bytes",
        bomb.len()
    );
    // What it inflates to, to be sure it is a bomb.
    let mut inflated = 0u64;
    let mut decoder = zstd::stream::read::Decoder::new(bomb.as_slice()).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match std::io::Read::read(&mut decoder, &mut chunk).unwrap() {
            0 => break,
            n => inflated += n as u64,
        }
    }
    assert_eq!(inflated, BOMB_INFLATED);
    drop(chunk);

    let before = peak_rss_kib();
    let requests = (0..4).map(|_| {
        app.client
            .post(app.url("/v1/auth/login"))
            .header("content-type", "application/json")
            .header("content-encoding", "zstd")
            .body(bomb.clone())
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(
        grown_mib < 128,
        "the peak RSS grew by {grown_mib} MiB for four bombs of {} MiB each",
        BOMB_INFLATED >> 20
    );
    for response in responses {
        let response = response.expect("an answer");
        assert_eq!(
            error_code(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await,
            "unsupported_content_encoding"
        );
    }

    // Every other coding too, on every kind of body, listed or not.
    for encoding in ["gzip", "br", "deflate", "compress", "x-made-up", "identity, gzip"] {
        let response = app
            .client
            .post(app.url("/v1/auth/register"))
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(json!({"email": "a@example.com", "password": PASSWORD}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await,
            "unsupported_content_encoding",
            "{encoding}"
        );
    }
    // `identity` is no encoding: the body is read as sent.
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let response = app
        .client
        .post(app.url("/v1/auth/register"))
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .body(json!({"email": email, "password": PASSWORD}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}}

e2e! {
/// The request counter was labelled with the raw method, so every invented method
/// added a series to `/metrics` for good. Methods outside the standard set count
/// as `other`.
async fn invented_methods_do_not_grow_the_metrics(backend) {
    let app = spawn_app_on(backend).await;
    let invented: Vec<String> = (0..40)
        .map(|_| format!("KLX{}", &uuid::Uuid::new_v4().simple().to_string()[..12]).to_uppercase())
        .collect();
    for (i, name) in invented.iter().enumerate() {
        let method = Method::from_bytes(name.as_bytes()).unwrap();
        let path = ["/v1/auth/login", "/health", "/no/such/path", "/v1/organizations"][i % 4];
        let response = app.client.request(method, app.url(path)).send().await.unwrap();
        assert!(response.status().is_client_error(), "{name} {path}");
    }
    let metrics = app.metrics().await;
    for name in &invented {
        assert!(!metrics.contains(name.as_str()), "{name} is a label in /metrics");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keyledger_http_requests_total") && l.contains("method=\"other\"")),
        "invented methods are counted as other"
    );
    // Every method label is one of a fixed set.
    let allowed = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "other",
    ];
    for line in metrics.lines().filter(|l| l.starts_with("keyledger_http_requests_total{")) {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a method label");
        assert!(allowed.contains(&method), "unbounded method label: {line}");
    }
}}

/// Asserts the headers every answer carries, naming the answer in failures.
fn assert_security_headers(headers: &reqwest::header::HeaderMap, what: &str) {
    let header = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
    assert!(
        header("content-security-policy").contains("frame-ancestors 'none'"),
        "{what}"
    );
    assert_eq!(header("x-frame-options"), "DENY", "{what}");
}

e2e! {
/// `nosniff`, `no-referrer`, `frame-ancestors 'none'` and `no-store` on every answer,
/// successes and every kind of error alike; no HSTS unless configured.
async fn security_headers_are_on_every_answer(backend) {
    let app = spawn_app_on_with(backend, |s| {
        s.rate_limits.per_second = 1;
        s.rate_limits.burst = 4;
    })
    .await;
    // The public keys keep their own cache lifetime (they are the same for everyone).
    let keys = app.client.get(app.url("/v1/auth/keys")).send().await.unwrap();
    assert_security_headers(keys.headers(), "keys");
    assert_eq!(keys.status(), StatusCode::OK);
    assert_eq!(keys.headers()["cache-control"], "public, max-age=300");
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let registered = app.register(&email, PASSWORD).await;
    let invalid_email = app.register("not an email", PASSWORD).await;
    let unauthorized = app.client.get(app.url("/v1/auth/me")).send().await.unwrap();
    let mut rate_limited = app.login(&email, "wrong password").await;
    while rate_limited.status() != StatusCode::TOO_MANY_REQUESTS {
        rate_limited = app.login(&email, "wrong password").await;
    }
    let answers = [
        ("201 register", registered, StatusCode::CREATED),
        ("422 register", invalid_email, StatusCode::UNPROCESSABLE_ENTITY),
        ("401 me", unauthorized, StatusCode::UNAUTHORIZED),
        ("429 login", rate_limited, StatusCode::TOO_MANY_REQUESTS),
        (
            "404 unknown path",
            app.client.get(app.url("/v1/nothing")).send().await.unwrap(),
            StatusCode::NOT_FOUND,
        ),
        (
            "405 wrong method",
            app.client.delete(app.url("/health")).send().await.unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "415 encoded body",
            app.client
                .post(app.url("/v1/organizations"))
                .header("content-encoding", "gzip")
                .body("x")
                .send()
                .await
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "200 health",
            app.client.get(app.url("/health")).send().await.unwrap(),
            StatusCode::OK,
        ),
    ];
    for (what, response, status) in answers {
        assert_eq!(response.status(), status, "{what}");
        assert_security_headers(response.headers(), what);
        assert_eq!(response.headers()["cache-control"], "no-store", "{what}");
        assert!(
            !response.headers().contains_key("strict-transport-security"),
            "{what}: HSTS is off by default"
        );
        assert!(
            response.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("default-src 'none'"),
            "{what}"
        );
    }

    let app = spawn_app_on_with(backend, |s| {
        s.server.hsts_max_age = Some(std::time::Duration::from_secs(31_536_000));
    })
    .await;
    for path in ["/health", "/v1/nothing"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            response.headers()["strict-transport-security"],
            "max-age=31536000",
            "{path}"
        );
    }
}}

e2e! {
/// `/docs` loaded an unpinned renderer from a CDN, running with this server's
/// origin. Now it is plain HTML: no script at all, nothing from another origin, and
/// a policy that allows only its own inline stylesheet, by hash.
async fn docs_page_runs_no_script_and_loads_nothing_from_elsewhere(backend) {
    let app = spawn_app_on(backend).await;
    let response = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_security_headers(response.headers(), "docs");
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let html = response.text().await.unwrap();
    assert!(!html.to_lowercase().contains("<script"), "a script in /docs");
    for attribute in ["src=", "srcset=", "@import", "url("] {
        assert!(!html.contains(attribute), "/docs loads something: {attribute}");
    }
    assert!(!html.contains("href=\"http"), "/docs links another origin");
    let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
    assert!(directives.contains(&"default-src 'none'"), "{policy}");
    assert!(directives.contains(&"base-uri 'none'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert!(!policy.contains("script-src"), "{policy}");
    // The one inline stylesheet is the one the policy names.
    let style = html
        .split("<style>")
        .nth(1)
        .and_then(|rest| rest.split("</style>").next())
        .expect("a stylesheet");
    assert_eq!(html.matches("<style>").count(), 1);
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(style));
    assert!(
        directives.contains(&format!("style-src 'sha256-{hash}'").as_str()),
        "{policy}"
    );
    // It documents every operation of the document.
    let document = body(app.get("/openapi.json").await).await;
    for path in document["paths"].as_object().unwrap().keys() {
        let escaped = path.replace('&', "&amp;").replace('<', "&lt;");
        assert!(html.contains(&format!("<code>{escaped}</code>")), "{path} missing");
    }
}}

e2e! {
/// KEYLEDGER_DOCS=off: `/docs` answers 404 in the envelope; the document stays.
async fn docs_can_be_turned_off(backend) {
    let app = spawn_app_on_with(backend, |s| s.server.docs = false).await;
    let response = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_security_headers(response.headers(), "docs off");
    assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");
    let document = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(document.status(), StatusCode::OK);
}}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    meta.permissions().mode() & 0o777
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

e2e! {
/// The embedded data directory was created 0755 and its database files 0644:
/// anyone on the host could read the personal data's keys and the password hashes.
/// Now the directory is 0700 and every file in it 0600 (database, WAL, shared
/// memory, lock), and so are key files and a directory made for them; a data
/// directory left by an older version is tightened on start.
async fn the_files_the_server_writes_are_its_users_alone(backend) {
    let root = std::env::temp_dir().join(format!("keyledger-modes-{}", uuid::Uuid::new_v4().simple()));
    let keys = root.join("keys");
    let mut app = spawn_app_on_with(backend, |s| {
        s.audit.key = None;
        s.audit.key_file = keys.join("audit-key.paserk");
        s.personal_data.email_index_key = None;
        s.personal_data.email_index_key_file = keys.join("email-index.key");
    })
    .await;
    app.signed_in_user().await;
    assert_eq!(mode(&keys), 0o700, "key directory");
    assert_eq!(mode(&keys.join("audit-key.paserk")), 0o600);
    assert_eq!(mode(&keys.join("email-index.key")), 0o600);

    if backend == Backend::Sqlite {
        let dir = app.resources.data_dir.clone();
        let files = ["keyledger.db", "keyledger.db-wal", "keyledger.db-shm", "server.lock"];
        assert_eq!(mode(&dir), 0o700, "data directory");
        for file in files {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
        // As an older version left them.
        app.stop().await;
        chmod(&dir, 0o755);
        for file in files {
            if dir.join(file).exists() {
                chmod(&dir.join(file), 0o644);
            }
        }
        let again = start(app.resources.clone(), app.settings.clone(), false).await;
        again.signed_in_user().await;
        assert_eq!(mode(&dir), 0o700, "data directory after a restart");
        for file in files {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file} after a restart");
        }
    }
    std::fs::remove_dir_all(root).unwrap();
}}

/// `text` in fullwidth forms (`a` → `ａ`).
fn fullwidth(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(c as u32 + 0xFEE0).unwrap(),
            c => c,
        })
        .collect()
}

e2e! {
/// `<script>…@x` was a valid address, and fullwidth or Cyrillic look-alikes of an
/// address registered as new accounts that showed as the same address. Now markup
/// is refused, a fullwidth spelling *is* the ASCII address (taken, and it signs in
/// to that account), and a Cyrillic look-alike is refused.
async fn look_alikes_of_an_address_do_not_make_a_second_account(backend) {
    let app = spawn_app_on(backend).await;
    let local = format!("ace.{}", uuid::Uuid::new_v4().simple());
    let email = format!("{local}@example.com");
    let registered = body(app.register(&email, PASSWORD).await).await;
    let user_id = registered["user_id"].as_str().unwrap().to_owned();

    // Fullwidth local part, fullwidth domain: the same address.
    for spelling in [
        format!("{}@example.com", fullwidth(&local)),
        format!("{local}@{}", fullwidth("example.com")),
    ] {
        assert_eq!(
            error_code(app.register(&spelling, PASSWORD).await, StatusCode::CONFLICT).await,
            "email_taken",
            "{spelling}"
        );
        let response = app.login(&spelling, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{spelling}");
        let tokens = app.tokens(response).await;
        let me = body(app.me(&tokens.access_token).await).await;
        assert_eq!(me["user_id"], user_id.as_str(), "{spelling}");
    }
    // Cyrillic а, с, е for the Latin letters, in the local part or the domain.
    let cyrillic = |text: &str| {
        text.replace('a', "\u{430}")
            .replace('c', "\u{441}")
            .replace('e', "\u{435}")
    };
    for spelling in [
        format!("{}@example.com", cyrillic(&local)),
        format!("{local}@{}", cyrillic("example.com")),
        format!("{}@example.com", cyrillic("ace")),
    ] {
        assert_eq!(
            error_code(app.register(&spelling, PASSWORD).await, StatusCode::UNPROCESSABLE_ENTITY)
                .await,
            "invalid_email",
            "{spelling}"
        );
    }
    for markup in ["<script>alert(1)</script>@x", "\"a b\"@example.com"] {
        assert_eq!(
            error_code(app.register(markup, PASSWORD).await, StatusCode::UNPROCESSABLE_ENTITY)
                .await,
            "invalid_email",
            "{markup}"
        );
    }
    // A real international address registers, composed and decomposed alike.
    let international = format!("jos\u{E9}.{}@b\u{FC}cher.de", &local[4..12]);
    let response = app.register(&international, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(body(response).await["email"], international.as_str());
    let decomposed = international
        .replace('\u{E9}', "e\u{301}")
        .replace('\u{FC}', "u\u{308}");
    assert_eq!(app.login(&decomposed, PASSWORD).await.status(), StatusCode::OK);
}}

e2e! {
/// Display names took bidi overrides and zero-width-only text, so a name could
/// show as another or as nothing.
async fn display_names_that_could_show_as_something_else_are_refused(backend) {
    let app = spawn_app_on(backend).await;
    for name in [
        "Alice\u{202E}gnp.exe",
        "\u{2066}Admin\u{2069}",
        "\u{200B}\u{200B}",
        "\u{3164}",
        "Line\u{2028}Break",
    ] {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        let response = app.register_named(&email, name).await;
        assert_eq!(
            error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_display_name",
            "{name:?}"
        );
    }
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let response = app
        .register_named(&email, "Zoe\u{308} \u{1F469}\u{200D}\u{1F4BB}")
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}}

e2e! {
/// A password is the same password however its accents are composed: `é` as one
/// code point or as `e` and a combining accent (platforms and keyboards differ).
async fn a_password_signs_in_however_its_accents_are_composed(backend) {
    let app = spawn_app_on(backend).await;
    let composed = "caf\u{E9} cr\u{E8}me br\u{FB}l\u{E9}e at midnight";
    let decomposed = "cafe\u{301} cre\u{300}me bru\u{302}le\u{301}e at midnight";
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    assert_eq!(app.register(&email, decomposed).await.status(), StatusCode::CREATED);
    assert_eq!(app.login(&email, composed).await.status(), StatusCode::OK);
    assert_eq!(app.login(&email, decomposed).await.status(), StatusCode::OK);
    assert_eq!(
        app.login(&email, "cafe creme brulee at midnight").await.status(),
        StatusCode::UNAUTHORIZED
    );
}}
