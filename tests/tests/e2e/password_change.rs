//! A password change ends the account's other sessions as the event log has them,
//! not as the (possibly lagging) read model does.

use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

e2e! { async fn changing_the_password_ends_sessions_the_read_model_has_not_projected(backend) {
    let app = spawn_app_on(backend).await;
    let (email, laptop) = app.signed_in_user().await;
    let phone = app.tokens(app.login(&email, PASSWORD).await).await;
    app.read_models_caught_up().await;
    // The read model lags: it has not seen the phone's session (yet).
    let phone_session: Uuid = phone.session_id.parse().unwrap();
    let removed = app
        .db()
        .execute(
            "DELETE FROM sessions WHERE session_id = $1",
            &[Bind::Id(phone_session)],
        )
        .await
        .unwrap();
    assert_eq!(removed, 1);

    let response = app
        .client
        .post(app.url("/v1/auth/password"))
        .bearer_auth(&laptop.access_token)
        .json(&json!({
            "current_password": PASSWORD,
            "new_password": "an entirely different horse, 2026",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // The phone's session ended all the same: its tokens are refused…
    assert_eq!(app.validate(&phone.access_token).await, json!({"active": false}));
    let refused = app.refresh(&phone.refresh_token).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // …and the log says why.
    let types = app.event_types("session", &phone.session_id).await;
    assert_eq!(types.last().map(String::as_str), Some("SessionRevoked"));
    // The laptop's session, which made the change, goes on.
    assert_eq!(app.validate(&laptop.access_token).await["active"], true);
}}
