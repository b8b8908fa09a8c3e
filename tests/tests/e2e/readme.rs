//! The README's code is code: its Rust snippets are copied from this file (between the
//! `README:` markers), a test fails when the two differ, and the token verification the
//! README promises "in a dozen lines" is run against a real server here.

use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The README's local verification of an access token, as the README shows it.
mod verify_locally {
    // README: verify
    use pasetors::{claims::ClaimsValidationRules, keys::AsymmetricPublicKey};
    use pasetors::{public, token::UntrustedToken, version4::V4, Public};
    use serde_json::Value;

    /// `keys` is the answer of `GET /v1/auth/keys`; the claims come back when `token` holds.
    pub fn verify(token: &str, keys: &Value) -> Option<Value> {
        let token = UntrustedToken::<Public, V4>::try_from(token).ok()?;
        let footer: Value = serde_json::from_slice(token.untrusted_footer()).ok()?;
        let keys = keys["keys"].as_array()?;
        let key = keys.iter().find(|key| key["kid"] == footer["kid"])?;
        let key = AsymmetricPublicKey::<V4>::try_from(key["paserk"].as_str()?).ok()?;
        let mut rules = ClaimsValidationRules::new(); // checks exp, nbf and iat
        rules.validate_issuer_with("keyledger"); // KEYLEDGER_ISSUER
        rules.validate_audience_with("keyledger"); // KEYLEDGER_AUDIENCE
        let verified = public::verify(&key, &token, &rules, None, None).ok()?;
        serde_json::from_str(verified.payload()).ok()
    }
    // README: end
}

/// The README's durable NATS consumer. Compiled here so that the snippet keeps up with
/// the `async-nats` version the workspace uses; what it receives is tested by
/// `nats_fanout`, against a stream of the test's own (this one names the default).
#[allow(dead_code)]
async fn listen_for_revoked_sessions() -> Result<(), async_nats::Error> {
    // README: nats
    use async_nats::jetstream::{self, consumer::pull};
    use futures::StreamExt;

    let nats = jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await?);
    let consumer = nats
        .get_stream("AUTH_EVENTS")
        .await?
        .get_or_create_consumer(
            "billing",
            pull::Config {
                durable_name: Some("billing".into()),
                filter_subject: "auth.events.session.SessionRevoked".into(),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let event: serde_json::Value = serde_json::from_slice(&message.payload)?;
        // Drop what you cached for the session; `event_id` tells a redelivery.
        println!("session {} ended", event["aggregate_id"]);
        message.ack().await?;
    }
    // README: end
    Ok(())
}

/// The lines between `// README: <name>` and `// README: end` in this file, without
/// their common indentation.
fn snippet(name: &str) -> String {
    let source = include_str!("readme.rs");
    let start = format!("// README: {name}\n");
    let from = source.find(&start).expect("start marker") + start.len();
    let to = from + source[from..].find("// README: end").expect("end marker");
    let lines: Vec<&str> = source[from..to].lines().collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut text: String = lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end().to_owned() + "\n")
        .collect();
    while text.ends_with("\n\n") {
        text.pop();
    }
    text
}

/// Every ```rust block of the README.
fn readme_rust_blocks() -> Vec<String> {
    let readme = include_str!("../../../README.md");
    readme
        .split("```rust\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn the_readmes_rust_snippets_are_the_code_tested_here() {
    let blocks = readme_rust_blocks();
    for name in ["verify", "nats"] {
        let code = snippet(name);
        assert!(
            blocks.contains(&code),
            "the README has no ```rust block equal to the `{name}` snippet of \
             tests/tests/e2e/readme.rs:\n{code}\nblocks:\n{blocks:#?}"
        );
    }
    assert_eq!(blocks.len(), 2, "a README Rust block that no test holds");
    let verify = snippet("verify");
    let logic = verify
        .lines()
        .skip_while(|l| !l.starts_with("pub fn"))
        .filter(|l| !l.trim().is_empty())
        .count();
    assert!(
        logic <= 12,
        "the README promises a dozen lines; the function has {logic}"
    );
}

e2e! { async fn verifying_a_token_locally(backend) {
    let app = spawn_app_on(backend).await;
    let (_, tokens) = app.signed_in_user().await;
    let keys = app.get("/v1/auth/keys").await;
    assert_eq!(keys.status(), StatusCode::OK);
    let keys: Value = body(keys).await;

    let claims = verify_locally::verify(&tokens.access_token, &keys)
        .expect("a fresh access token verifies with the published keys");
    assert_eq!(claims["sid"], tokens.session_id.as_str());
    assert_eq!(claims["iss"], "keyledger");
    let me = body(app.me(&tokens.access_token).await).await;
    assert_eq!(claims["sub"], me["user_id"]);

    // Anything else does not: another byte of signature, or a key set without its key.
    let mut forged = tokens.access_token.clone().into_bytes();
    let at = forged.len() / 2;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(verify_locally::verify(&forged, &keys), None);
    assert_eq!(verify_locally::verify(&tokens.access_token, &json!({"keys": []})), None);
    assert_eq!(verify_locally::verify("not a token", &keys), None);
}}
