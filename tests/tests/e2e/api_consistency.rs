//! API consistency a newcomer tripped over (issue 19): the root, the license, one
//! rule for unknown and missing fields, `authorize` with and without a header, and
//! the command line beside a running embedded server.

use keyledger_e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[test]
fn the_license_file_is_the_apache_license_cargo_toml_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("license = \"Apache-2.0\""),
        "Cargo.toml's license changed"
    );
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("a LICENSE file");
    assert!(license.contains("Apache License"));
    assert!(license.contains("Version 2.0, January 2004"));
    assert!(license.contains("http://www.apache.org/licenses/"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
}

e2e! { async fn the_root_points_to_the_docs(backend) {
    let app = spawn_app_on(backend).await;
    let response = app.get("/").await;
    assert_eq!(response.status(), StatusCode::OK);
    let root = body(response).await;
    assert_eq!(root["name"], "keyledger");
    assert_eq!(root["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(root["docs"], "/docs");
    assert_eq!(root["openapi"], "/openapi.json");
    assert_eq!(root["openid_configuration"], "/.well-known/openid-configuration");
    assert_eq!(root["health"], "/health");
    // Every path it names is served.
    for key in ["docs", "openapi", "openid_configuration", "health"] {
        let path = root[key].as_str().unwrap();
        assert_eq!(app.get(path).await.status(), StatusCode::OK, "{path}");
    }
}}
