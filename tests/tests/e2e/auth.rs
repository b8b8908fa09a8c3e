use keyledger_e2e::*;
use reqwest::StatusCode;

#[tokio::test]
async fn register_then_login_then_me_works_at_once() {
    let app = spawn_app().await;
    let (email, tokens) = app.signed_in_user().await;
    let me = app.me(&tokens.access_token).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me = body(me).await;
    assert_eq!(me["email"], email);
}
