//! Passkeys end to end with a software authenticator we did not write
//! (webauthn-authenticator-rs's `SoftPasskey`): registering, signing in with an
//! account hint, the passkey as the second factor after a password, renaming,
//! removing, passwordless accounts, and the ceremonies that must fail (a replayed
//! challenge, a wrong origin, a wrong RP id, a credential of another account, a
//! signature counter that went back). Discoverable sign-in needs a resident key,
//! which `SoftPasskey` cannot make: the browser test covers it.

use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use url::Url;
use webauthn_authenticator_rs::prelude::{
    CreationChallengeResponse, RequestChallengeResponse, WebauthnAuthenticator,
};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

const RP_ID: &str = "keyledger.test";
const ORIGIN: &str = "https://keyledger.test";
/// Allowed too, so that a ceremony from it fails on the RP id alone.
const OTHER_ORIGIN: &str = "https://login.keyledger.test";

pub(crate) async fn passkey_app(backend: Backend) -> TestApp {
    spawn_app_on_with(backend, |s| {
        s.webauthn.rp_id = RP_ID.into();
        s.webauthn.origins = vec![ORIGIN.parse().unwrap(), OTHER_ORIGIN.parse().unwrap()];
    })
    .await
}

pub(crate) fn origin() -> Url {
    ORIGIN.parse().unwrap()
}

/// An authenticator that verifies its user (a passkey needs it).
pub(crate) fn authenticator() -> SoftPasskey {
    SoftPasskey::new(true)
}

pub(crate) fn creation(options: &Value) -> CreationChallengeResponse {
    serde_json::from_value(options.clone()).expect("creation options webauthn-rs's clients read")
}

fn request(options: &Value) -> RequestChallengeResponse {
    serde_json::from_value(options.clone()).expect("request options webauthn-rs's clients read")
}

/// Registers a passkey of `authenticator` on the account behind `access`;
/// the answer.
async fn register(
    app: &TestApp,
    access: &str,
    authenticator: &mut SoftPasskey,
    name: &str,
) -> Value {
    let (status, start) = call(
        app,
        Method::POST,
        "/v1/passkeys/register/start",
        Some(access),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{start}");
    let selection = &start["options"]["publicKey"]["authenticatorSelection"];
    assert_eq!(selection["residentKey"], "preferred", "{start}");
    assert_eq!(selection["userVerification"], "required", "{start}");
    let credential = authenticator
        .do_registration(origin(), creation(&start["options"]))
        .expect("the soft passkey registers");
    let (status, added) = call(
        app,
        Method::POST,
        "/v1/passkeys/register/finish",
        Some(access),
        Some(
            json!({"challenge_id": start["challenge_id"], "credential": credential, "name": name}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    added
}

/// A sign-in's start, with or without an address.
async fn sign_in_options(app: &TestApp, email: Option<&str>) -> Value {
    let body = match email {
        Some(email) => json!({ "email": email }),
        None => json!({}),
    };
    let (status, start) = call(
        app,
        Method::POST,
        "/v1/auth/passkey/start",
        None,
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{start}");
    start
}

async fn finish_sign_in(
    app: &TestApp,
    challenge_id: &Value,
    credential: Value,
) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        "/v1/auth/passkey/finish",
        None,
        Some(json!({"challenge_id": challenge_id, "credential": credential})),
    )
    .await
}

/// Signs in to `email` with `authenticator`'s passkey.
pub(crate) async fn sign_in(
    app: &TestApp,
    email: &str,
    authenticator: &mut SoftPasskey,
) -> (StatusCode, Value) {
    let start = sign_in_options(app, Some(email)).await;
    let assertion = authenticator
        .do_authentication(origin(), request(&start["options"]))
        .expect("the soft passkey signs");
    finish_sign_in(
        app,
        &start["challenge_id"],
        serde_json::to_value(assertion).unwrap(),
    )
    .await
}

fn error(answer: &Value) -> &str {
    answer["error"].as_str().unwrap_or_default()
}

e2e! {
    /// Register → listed → sign in with it alone (two factors) → a password
    /// login now asks for it as the second factor → rename → remove with a
    /// recent authentication; then the password alone works again.
    async fn a_passkey_signs_in_alone_and_as_the_second_factor(backend) {
        let app = passkey_app(backend).await;
        let (email, tokens) = app.signed_in_user().await;
        let access = tokens.access_token.as_str();
        let mut key = authenticator();

        let added = register(&app, access, &mut key, "Laptop").await;
        assert_eq!(added["name"], "Laptop");
        assert_eq!(added["backup_eligible"], false, "a soft passkey stays on its device");
        let codes = added["backup_codes"].as_array().expect("the first second factor brings backup codes");
        assert_eq!(codes.len(), 10);
        let passkey_id = added["id"].as_str().unwrap().to_owned();
        let (_, listed) = call(&app, Method::GET, "/v1/passkeys", Some(access), None).await;
        assert_eq!(listed["passkeys"].as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(listed["passkeys"][0]["id"], passkey_id.as_str());
        let (_, methods) = call(&app, Method::GET, "/v1/mfa/methods", Some(access), None).await;
        assert!(methods["methods"].as_array().unwrap().iter().any(|m| m["type"] == "passkey"), "{methods}");

        // Alone: possession and user verification.
        let (status, signed_in) = sign_in(&app, &email, &mut key).await;
        assert_eq!(status, StatusCode::OK, "{signed_in}");
        let validated = app.validate(signed_in["access_token"].as_str().unwrap()).await;
        assert_eq!(validated["amr"], json!(["hwk", "user", "mfa"]), "{validated}");

        // After a password: the passkey is one of the methods.
        let (status, login) = call(&app, Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        assert_eq!(status, StatusCode::OK, "{login}");
        assert_eq!(login["mfa_required"], true, "a password alone no longer signs in: {login}");
        let method = login["methods"].as_array().unwrap().iter().find(|m| m["type"] == "passkey").expect("the passkey is a method").clone();
        assert_eq!(method["id"], passkey_id.as_str());
        let mfa_token = login["mfa_token"].as_str().unwrap();
        let (status, challenge) = call(&app, Method::POST, "/v1/mfa/challenge", None, Some(json!({"mfa_token": mfa_token, "method_id": method["id"]}))).await;
        assert_eq!(status, StatusCode::OK, "{challenge}");
        let assertion = key.do_authentication(origin(), request(&challenge["options"])).unwrap();
        let (status, verified) = call(&app, Method::POST, "/v1/mfa/verify", None, Some(json!({"mfa_token": mfa_token, "credential": assertion}))).await;
        assert_eq!(status, StatusCode::OK, "{verified}");
        let second = verified["access_token"].as_str().unwrap().to_owned();
        assert_eq!(app.validate(&second).await["amr"], json!(["pwd", "hwk", "mfa"]));

        // Rename, then remove from the session that just proved both factors.
        let (status, renamed) = call(&app, Method::PATCH, &format!("/v1/passkeys/{passkey_id}"), Some(&second), Some(json!({"name": "Work laptop"}))).await;
        assert_eq!((status, renamed["name"].as_str()), (StatusCode::OK, Some("Work laptop")), "{renamed}");
        let (status, refused) = call(&app, Method::PATCH, &format!("/v1/passkeys/{passkey_id}"), Some(&second), Some(json!({"name": ""}))).await;
        assert_eq!((status, error(&refused)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_name"));
        // A name reads as what it is: no bidi override (it shows as a name).
        let (status, refused) = call(&app, Method::PATCH, &format!("/v1/passkeys/{passkey_id}"), Some(&second), Some(json!({"name": "Laptop\u{202E}exe.txt"}))).await;
        assert_eq!((status, error(&refused)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_name"));
        // An assertion made before the removal is worth nothing after it.
        let held = sign_in_options(&app, Some(&email)).await;
        let before = key.do_authentication(origin(), request(&held["options"])).unwrap();
        let (status, removed) = call(&app, Method::DELETE, &format!("/v1/passkeys/{passkey_id}"), Some(&second), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{removed}");
        let (status, gone) = finish_sign_in(&app, &held["challenge_id"], serde_json::to_value(before).unwrap()).await;
        assert_eq!((status, error(&gone)), (StatusCode::UNAUTHORIZED, "invalid_passkey"), "{gone}");
        let (_, listed) = call(&app, Method::GET, "/v1/passkeys", Some(&second), None).await;
        assert_eq!(listed["passkeys"], json!([]));
        let tokens = app.tokens(app.login(&email, PASSWORD).await).await;
        assert!(tokens.access_token.starts_with("v4.public."), "the password alone works again");

        // The events hold the credential and its name sealed.
        app.read_models_caught_up().await;
        let registered: Vec<Value> = app.stored_events().await.into_iter()
            .filter(|e| e.event_type == "PasskeyRegistered")
            .map(|e| e.payload_json()["PasskeyRegistered"].clone())
            .collect();
        assert_eq!(registered.len(), 1);
        for field in ["credential", "passkey_name"] {
            assert!(registered[0][field].as_str().unwrap().starts_with("sealed:"), "{field}: {}", registered[0]);
        }
    }
}

e2e! {
    /// Every ceremony that must fail does, and says no more than
    /// `invalid_passkey` / `invalid_challenge`.
    async fn replays_wrong_origins_wrong_rp_ids_and_other_accounts_credentials_are_refused(backend) {
        let app = passkey_app(backend).await;
        let (alice, alice_tokens) = app.signed_in_user().await;
        let (bob, bob_tokens) = app.signed_in_user().await;
        let (mut alice_key, mut bob_key) = (authenticator(), authenticator());
        register(&app, &alice_tokens.access_token, &mut alice_key, "Alice's").await;
        register(&app, &bob_tokens.access_token, &mut bob_key, "Bob's").await;

        // A challenge works once, even for a right answer.
        let start = sign_in_options(&app, Some(&alice)).await;
        let assertion = serde_json::to_value(alice_key.do_authentication(origin(), request(&start["options"])).unwrap()).unwrap();
        let (status, first) = finish_sign_in(&app, &start["challenge_id"], assertion.clone()).await;
        assert_eq!(status, StatusCode::OK, "{first}");
        // A session that proved the passkey: a registration needs the account's
        // factors proved lately, and the passkey is one now.
        let alice_access = first["access_token"].as_str().unwrap().to_owned();
        let (status, replayed) = finish_sign_in(&app, &start["challenge_id"], assertion).await;
        assert_eq!((status, error(&replayed)), (StatusCode::BAD_REQUEST, "invalid_challenge"));
        let (status, unknown) = finish_sign_in(&app, &json!(uuid::Uuid::new_v4()), json!({})).await;
        assert_eq!((status, error(&unknown)), (StatusCode::BAD_REQUEST, "invalid_challenge"));

        // Another origin: the browser there would sign, the server refuses.
        let start = sign_in_options(&app, Some(&alice)).await;
        let phished = alice_key.do_authentication("https://keyledger-login.test".parse().unwrap(), {
            let mut options = start["options"].clone();
            options["publicKey"]["rpId"] = json!("keyledger-login.test");
            request(&options)
        }).unwrap();
        let (status, refused) = finish_sign_in(&app, &start["challenge_id"], serde_json::to_value(phished).unwrap()).await;
        assert_eq!((status, error(&refused)), (StatusCode::UNAUTHORIZED, "invalid_passkey"), "wrong origin");

        // An allowed origin, but an assertion for another RP id.
        let start = sign_in_options(&app, Some(&alice)).await;
        let other_rp = alice_key.do_authentication(OTHER_ORIGIN.parse().unwrap(), {
            let mut options = start["options"].clone();
            options["publicKey"]["rpId"] = json!("login.keyledger.test");
            request(&options)
        }).unwrap();
        let (status, refused) = finish_sign_in(&app, &start["challenge_id"], serde_json::to_value(other_rp).unwrap()).await;
        assert_eq!((status, error(&refused)), (StatusCode::UNAUTHORIZED, "invalid_passkey"), "wrong RP id");

        // Bob's passkey for Alice's sign-in: his options name his credential,
        // but the challenge was Alice's.
        let alice_start = sign_in_options(&app, Some(&alice)).await;
        let bob_start = sign_in_options(&app, Some(&bob)).await;
        let mut options = bob_start["options"].clone();
        options["publicKey"]["challenge"] = alice_start["options"]["publicKey"]["challenge"].clone();
        let bobs = bob_key.do_authentication(origin(), request(&options)).unwrap();
        let (status, refused) = finish_sign_in(&app, &alice_start["challenge_id"], serde_json::to_value(bobs).unwrap()).await;
        assert_eq!((status, error(&refused)), (StatusCode::UNAUTHORIZED, "invalid_passkey"), "another account's credential");

        // A registration answered for another origin is refused, and the
        // challenge is spent.
        let (status, refused) = call(&app, Method::POST, "/v1/passkeys/register/start", Some(&alice_tokens.access_token), None).await;
        assert_eq!((status, error(&refused)), (StatusCode::UNAUTHORIZED, "reauthentication_required"), "a password alone no longer adds a passkey");
        let (_, start) = call(&app, Method::POST, "/v1/passkeys/register/start", Some(&alice_access), None).await;
        let elsewhere = authenticator().do_registration("https://keyledger-login.test".parse().unwrap(), {
            let mut options = start["options"].clone();
            options["publicKey"]["rp"]["id"] = json!("keyledger-login.test");
            creation(&options)
        }).unwrap();
        let (status, refused) = call(&app, Method::POST, "/v1/passkeys/register/finish", Some(&alice_access), Some(json!({"challenge_id": start["challenge_id"], "credential": elsewhere}))).await;
        assert_eq!((status, error(&refused)), (StatusCode::UNAUTHORIZED, "invalid_passkey"));

        // Bob cannot finish Alice's registration ceremony.
        let (_, start) = call(&app, Method::POST, "/v1/passkeys/register/start", Some(&alice_access), None).await;
        let credential = authenticator().do_registration(origin(), creation(&start["options"])).unwrap();
        let (status, refused) = call(&app, Method::POST, "/v1/passkeys/register/finish", Some(&bob_tokens.access_token), Some(json!({"challenge_id": start["challenge_id"], "credential": credential}))).await;
        assert_eq!((status, error(&refused)), (StatusCode::BAD_REQUEST, "invalid_challenge"));

        // An address without passkeys, or without an account, gets options
        // shaped like an account's: one credential named, no hint.
        let known = sign_in_options(&app, Some(&alice)).await;
        let unknown = sign_in_options(&app, Some("nobody@example.com")).await;
        for options in [&known, &unknown] {
            let allowed = options["options"]["publicKey"]["allowCredentials"].as_array().expect("credentials named");
            assert_eq!(allowed.len(), 1, "{options}");
            assert!(options["options"].get("mediation").is_none(), "{options}");
        }
        let again = sign_in_options(&app, Some("nobody@example.com")).await;
        assert_eq!(again["options"]["publicKey"]["allowCredentials"], unknown["options"]["publicKey"]["allowCredentials"], "the same stand-in every time");
        // Only an object is a sign-in's start.
        for body in [json!([null]), json!({"email": 7}), json!("x")] {
            let (status, refused) = call(&app, Method::POST, "/v1/auth/passkey/start", None, Some(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {refused}");
        }
        // Without an address: no credential named.
        let discoverable = sign_in_options(&app, None).await;
        assert_eq!(discoverable["options"]["publicKey"]["allowCredentials"], json!([]), "{discoverable}");
    }
}

e2e! {
    /// A signature counter that goes back (an assertion made before the last
    /// one, as a clone of the key would make) is refused and recorded.
    async fn a_counter_that_goes_back_is_refused_and_recorded(backend) {
        let app = passkey_app(backend).await;
        let (email, tokens) = app.signed_in_user().await;
        let mut key = authenticator();
        register(&app, &tokens.access_token, &mut key, "Key").await;

        let held = sign_in_options(&app, Some(&email)).await;
        let stale = key.do_authentication(origin(), request(&held["options"])).unwrap();
        let (status, newer) = sign_in(&app, &email, &mut key).await;
        assert_eq!(status, StatusCode::OK, "{newer}");
        let (status, refused) = finish_sign_in(&app, &held["challenge_id"], serde_json::to_value(stale).unwrap()).await;
        assert_eq!((status, error(&refused)), (StatusCode::UNAUTHORIZED, "invalid_passkey"), "{refused}");

        let suspected: Vec<Value> = app.stored_events().await.into_iter()
            .filter(|e| e.event_type == "PasskeyCloneSuspected")
            .map(|e| e.payload_json()["PasskeyCloneSuspected"].clone())
            .collect();
        assert_eq!(suspected.len(), 1, "{suspected:?}");
        assert_eq!(suspected[0]["stored_counter"], 2);
        assert_eq!(suspected[0]["presented_counter"], 1);
        // The key goes on working with its next signature.
        let (status, next) = sign_in(&app, &email, &mut key).await;
        assert_eq!(status, StatusCode::OK, "{next}");

        // A suspended account: a right passkey signs in no more.
        let user_id = body(app.me(next["access_token"].as_str().unwrap()).await).await["user_id"].as_str().unwrap().to_owned();
        let (admin_id, admin) = app.new_user().await;
        app.make_platform_admin(admin_id).await;
        let (status, _) = call(&app, Method::POST, &format!("/v1/admin/users/{user_id}/suspend"), Some(&admin), Some(json!({"reason": "review"}))).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, refused) = sign_in(&app, &email, &mut key).await;
        assert_eq!((status, error(&refused)), (StatusCode::FORBIDDEN, "account_suspended"), "{refused}");
    }
}

e2e! {
    /// An account made with a passkey has no password: a password login fails
    /// like a wrong password, the passkey signs in, and its last passkey cannot
    /// be removed.
    async fn a_passwordless_account_signs_in_with_its_passkey_only(backend) {
        let app = passkey_app(backend).await;
        let email = format!("passkey-{}@example.com", uuid::Uuid::new_v4().simple());
        let mut key = authenticator();
        let (status, start) = call(&app, Method::POST, "/v1/auth/passkey/register/start", None, Some(json!({"email": email, "display_name": "Ada"}))).await;
        assert_eq!(status, StatusCode::OK, "{start}");
        let credential = key.do_registration(origin(), creation(&start["options"])).unwrap();
        let (status, registered) = call(&app, Method::POST, "/v1/auth/passkey/register/finish", None, Some(json!({"challenge_id": start["challenge_id"], "credential": credential, "name": "Phone"}))).await;
        assert_eq!(status, StatusCode::CREATED, "{registered}");
        assert_eq!(registered["email"], email.as_str());

        let (status, login) = call(&app, Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        assert_eq!((status, error(&login)), (StatusCode::UNAUTHORIZED, "invalid_credentials"), "no password, no password prompt");

        let (status, signed_in) = sign_in(&app, &email, &mut key).await;
        assert_eq!(status, StatusCode::OK, "{signed_in}");
        let access = signed_in["access_token"].as_str().unwrap().to_owned();
        let (_, me) = call(&app, Method::GET, "/v1/auth/me", Some(&access), None).await;
        assert_eq!(me["email"], email.as_str(), "{me}");
        let (_, listed) = call(&app, Method::GET, "/v1/passkeys", Some(&access), None).await;
        let passkey_id = listed["passkeys"][0]["id"].as_str().unwrap().to_owned();
        assert_eq!(listed["passkeys"][0]["name"], "Phone");

        let (status, refused) = call(&app, Method::DELETE, &format!("/v1/passkeys/{passkey_id}"), Some(&access), None).await;
        assert_eq!((status, error(&refused)), (StatusCode::CONFLICT, "last_sign_in_method"), "{refused}");
        // A second passkey, and the first may go.
        let mut spare = authenticator();
        let added = register(&app, &access, &mut spare, "Spare").await;
        assert!(added["backup_codes"].is_null(), "no backup codes without a password: {added}");
        let (status, _) = call(&app, Method::DELETE, &format!("/v1/passkeys/{passkey_id}"), Some(&access), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, spare_session) = sign_in(&app, &email, &mut spare).await;
        assert_eq!(status, StatusCode::OK);

        // No password to re-enter: a fresh passkey sign-in erases the account.
        let fresh = spare_session["access_token"].as_str().unwrap();
        let (status, refused) = call(&app, Method::DELETE, "/v1/users/me", Some(fresh), Some(json!({"password": PASSWORD}))).await;
        assert_eq!((status, error(&refused)), (StatusCode::UNAUTHORIZED, "invalid_credentials"), "no password matches");
        let (status, erased) = call(&app, Method::DELETE, "/v1/users/me", Some(fresh), Some(json!({}))).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{erased}");
        let start = sign_in_options(&app, Some(&email)).await;
        assert!(spare.do_authentication(origin(), request(&start["options"])).is_err(), "the address names no passkey any more");
    }
}

e2e! {
    /// With an attestation allowlist, only a listed authenticator model signed
    /// by its vendor's root registers: not a passkey without attestation, not
    /// another vendor's token.
    async fn an_attestation_allowlist_admits_only_listed_authenticators(backend) {
        use crypto_glue::traits::{EncodePem, LineEndingPem};
        use webauthn_authenticator_rs::softtoken::{SoftToken, AAGUID};

        let (mut listed, root) = SoftToken::new(true).expect("a soft token");
        let (mut unlisted, _) = SoftToken::new(true).expect("another vendor's token");
        let allowlist = std::env::temp_dir().join(format!("keyledger-allowlist-{}.json", uuid::Uuid::new_v4()));
        let entry = json!([{
            "aaguid": AAGUID.to_string(),
            "description": "Soft token",
            "root_ca": root.to_pem(LineEndingPem::LF).expect("PEM"),
        }]);
        std::fs::write(&allowlist, entry.to_string()).unwrap();
        let path = allowlist.clone();
        let app = spawn_app_on_with(backend, move |s| {
            s.webauthn.rp_id = RP_ID.into();
            s.webauthn.origins = vec![ORIGIN.parse().unwrap()];
            s.webauthn.attestation_allowlist = Some(path);
        })
        .await;
        std::fs::remove_file(&allowlist).unwrap();
        let (_, tokens) = app.signed_in_user().await;
        let access = tokens.access_token.as_str();

        let attempt = |authenticator: &mut dyn WebauthnAuthenticator, options: &Value| {
            serde_json::to_value(authenticator.do_registration(origin(), creation(options)).expect("the authenticator answers")).unwrap()
        };
        let finish = |start: Value, credential: Value| {
            let app = &app;
            async move {
                call(app, Method::POST, "/v1/passkeys/register/finish", Some(access), Some(json!({"challenge_id": start["challenge_id"], "credential": credential}))).await
            }
        };
        for (name, authenticator) in [("no attestation", &mut authenticator() as &mut dyn WebauthnAuthenticator), ("another vendor", &mut unlisted)] {
            let (_, start) = call(&app, Method::POST, "/v1/passkeys/register/start", Some(access), None).await;
            assert_eq!(start["options"]["publicKey"]["attestation"], "direct", "{start}");
            let credential = attempt(authenticator, &start["options"]);
            let (status, refused) = finish(start, credential).await;
            assert_eq!((status, error(&refused)), (StatusCode::UNAUTHORIZED, "invalid_passkey"), "{name}: {refused}");
        }
        let (_, start) = call(&app, Method::POST, "/v1/passkeys/register/start", Some(access), None).await;
        let credential = attempt(&mut listed, &start["options"]);
        let (status, added) = finish(start, credential).await;
        assert_eq!(status, StatusCode::CREATED, "{added}");
    }
}
