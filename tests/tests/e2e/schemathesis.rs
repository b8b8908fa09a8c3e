//! Property-based fuzzing of the running server with [schemathesis], driven by the
//! served `/openapi.json`: any 5xx, any answer whose status, content type, headers or
//! body the document does not describe, fails the test.
//!
//! The CLI comes from PyPI, pinned in `.ci/install-schemathesis` (which `.ci/run`
//! runs, exporting `SCHEMATHESIS`). It is required: without it the test fails and
//! says how to install it.
//!
//! # What is fuzzed, and as whom
//!
//! * The main caller is a platform administrator, so the admin and audit routes are
//!   reached past their 403; a shorter run before it uses a service account's token
//!   (client credentials), whose paths through authentication differ. An
//!   organization with a custom role, a service account and a second member exists
//!   before the runs, and its ids are offered to the generator for half of the path
//!   parameters (the other half stay random), so the organization routes are reached
//!   past their 404.
//! * Operations that can end the caller's session or powers (logout, revoking a
//!   session, suspending an account, taking platform administration away, ending
//!   every session started before an instant) are fuzzed
//!   last, each in a run of its own with a fresh session: in the main run they would
//!   kill the token half way and leave every later request at 401 or 403.
//! * The per-IP rate limit is off (the harness default), so fuzzing is not answered
//!   with 429; its answer is checked against the document by the `openapi` tests.
//! * Both back ends are fuzzed, each with part of the budget ([`MAX_EXAMPLES`]).
//!
//! [schemathesis]: https://schemathesis.readthedocs.io

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keyledger_e2e::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// Test cases per operation and phase as the administrator, on each back end.
///
/// The budget is split between the back ends rather than doubled. PostgreSQL alone
/// was fuzzed with 100 cases (and 25 as the service account): about a minute of CPU,
/// one to two minutes on two shared cores. Both back ends at that budget took twice
/// the CPU, a minute more of CI; 40 (and 10) on each keep the total about where it
/// was (measured: ~50-60 s of CPU before, ~60 s now). A little less than half each,
/// because schemathesis's coverage phase (the schema's boundary values) runs in
/// full on both whatever the budget, which is what a second store most needs.
/// Little else is lost: everything above the store is the same code on both, and
/// each half draws a seed of its own, so together they still try about as many
/// different cases of it, while what only one store gets wrong (a NUL PostgreSQL's
/// `text` cannot hold, say) is fuzzed on that store.
const MAX_EXAMPLES: u32 = 40;

/// As the service account, which most routes refuse early (403 or 404); split
/// between the back ends like [`MAX_EXAMPLES`] (25 on PostgreSQL alone before).
const SERVICE_ACCOUNT_EXAMPLES: u32 = 10;

/// A run that takes longer than this is stopped and fails the test.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Every check schemathesis has but `positive_data_acceptance`, which expects every
/// schema-valid request to be accepted. This API refuses schema-valid input by rules
/// JSON Schema cannot state (a password's strength measured against the account's
/// own email and name, the slug and permission grammars, printable text, "nobody
/// grants what they do not hold"), with documented 4xx answers that the checks kept
/// here do verify.
const CHECKS: [&str; 4] = [
    "--checks",
    "all",
    "--exclude-checks",
    "positive_data_acceptance",
];

/// Paths whose operations can end the caller's session, erase its account or take
/// its administration away (the generator finds the caller's own ids through
/// `/v1/auth/me` and the sessions list); fuzzed one by one, each by a fresh
/// platform administrator.
///
/// `revoke-before` ends every session started before its cut-off (up to a minute
/// ahead), so it comes last: the administrators made for the runs after it could
/// start within that minute.
const CALLER_ENDING: [&str; 7] = [
    "/v1/auth/logout",
    "/v1/auth/sessions/{session_id}",
    "/v1/admin/users/{user_id}/suspend",
    "/v1/users/me",
    "/v1/admin/users/{user_id}",
    "/v1/admin/users/{user_id}/platform-admin",
    "/v1/admin/sessions/revoke-before",
];

const INSTALL: &str = "install it with `bash .ci/install-schemathesis` (the pinned \
    version from PyPI, into .ci/venv where this test looks), or set SCHEMATHESIS to a \
    schemathesis 4.x CLI, or put one on PATH";

/// The CLI: `$SCHEMATHESIS`, else the repository's `.ci/venv`, else `schemathesis`
/// on PATH. Panics when none is there or it is not 4.x (the flags used are 4.x's).
fn schemathesis() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/venv/bin/schemathesis");
    let cli = match std::env::var_os("SCHEMATHESIS") {
        Some(path) => PathBuf::from(path),
        None if venv.is_file() => venv,
        None => PathBuf::from("schemathesis"),
    };
    let output = std::process::Command::new(&cli)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "schemathesis is required ({}: {e}); {INSTALL}",
                cli.display()
            )
        });
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && version.contains("version 4."),
        "schemathesis 4.x is required, {} says {version:?}; {INSTALL}",
        cli.display()
    );
    cli
}

/// A directory of this test's own (config, output, anything schemathesis writes),
/// removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("keyledger-schemathesis-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server under test and the CLI fuzzing it.
struct Fuzzer<'a> {
    app: &'a TestApp,
    cli: PathBuf,
    scratch: Scratch,
}

impl Fuzzer<'_> {
    /// Runs schemathesis against the app as `token` (named `caller` in messages), on
    /// the operations `filter` selects; panics with its report on failure.
    async fn run(&self, caller: &str, token: &str, examples: u32, filter: &[&str]) {
        let (app, cli, scratch) = (self.app, &self.cli, &self.scratch);
        let log = scratch
            .0
            .join(format!("run-{}.txt", Uuid::new_v4().simple()));
        let out = std::fs::File::create(&log).expect("log file");
        let started = Instant::now();
        let mut child = tokio::process::Command::new(cli)
            .arg("--config-file")
            .arg(scratch.0.join("schemathesis.toml"))
            .arg("run")
            .arg(app.url("/openapi.json"))
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(CHECKS)
            .args(["--max-examples", &examples.to_string()])
            // Nothing kept between runs (by default examples go to ./.hypothesis).
            .args(["--generation-database", "none", "--no-color"])
            .args(filter)
            .current_dir(&scratch.0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("schemathesis did not start ({e}); {INSTALL}"));
        let status = tokio::time::timeout(RUN_TIMEOUT, child.wait()).await;
        let report = std::fs::read_to_string(&log).unwrap_or_default();
        let what = format!("schemathesis as {caller} {}", filter.join(" "));
        match status {
            Err(_) => panic!("{what} took longer than {RUN_TIMEOUT:?}:\n{report}"),
            Ok(status) => {
                let status = status.expect("schemathesis exit status");
                assert!(
                    status.success(),
                    "{what} found problems ({status}); reproduce with the seed below:\n{report}"
                );
            }
        }
        let summary = report
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(" generated, ") || l.starts_with("Seed:"))
            .collect::<Vec<_>>()
            .join("; ");
        println!("{what}: {summary} in {:?}", started.elapsed());
    }
}

async fn created(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let response = app.call(Method::POST, path, Some(token), Some(&body)).await;
    assert_eq!(response.status(), StatusCode::CREATED, "POST {path}");
    keyledger_e2e::body(response).await
}

/// Writes the config that offers the organization's ids for path parameters; returns
/// the service account's client id and secret.
async fn organization_fixture(app: &TestApp, admin: &str, scratch: &Scratch) -> (String, String) {
    let slug = format!("fuzz-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let org = created(
        app,
        admin,
        "/v1/organizations",
        json!({"slug": slug, "name": "Fuzzed"}),
    )
    .await;
    let org = org["organization_id"].as_str().expect("org id").to_owned();
    let role = created(
        app,
        admin,
        &format!("/v1/organizations/{org}/roles"),
        json!({"name": "billing", "permissions": ["invoices:read"]}),
    )
    .await;
    let account = created(
        app,
        admin,
        &format!("/v1/organizations/{org}/service-accounts"),
        json!({"name": "worker", "roles": ["member"]}),
    )
    .await;
    let (member, _) = app.new_user().await;
    created(
        app,
        admin,
        &format!("/v1/organizations/{org}/members"),
        json!({"user_id": member, "roles": ["member"]}),
    )
    .await;
    let ids = [
        ("org_id", org),
        (
            "role_id",
            role["role_id"].as_str().expect("role id").to_owned(),
        ),
        (
            "service_account_id",
            account["service_account_id"]
                .as_str()
                .expect("service account id")
                .to_owned(),
        ),
        ("user_id", member.to_string()),
    ];
    // `negative_data_rejection` counts schemathesis's default rejections plus 413: a
    // schema-violating body larger than KEYLEDGER_MAX_BODY_BYTES is refused for its
    // size before its content is read, which is a rejection all the same.
    let mut config = String::from(
        "[checks.negative_data_rejection]\nexpected-statuses = [\"400\", \"401\", \"403\", \
         \"404\", \"405\", \"406\", \"409\", \"413\", \"415\", \"422\", \"428\", \"429\", \
         \"5xx\"]\n\n",
    );
    for (name, id) in &ids {
        config.push_str(&format!("[dictionaries.{name}]\nvalues = [\"{id}\"]\n\n"));
    }
    config.push_str("[parameters]\n");
    for (name, _) in &ids {
        config.push_str(&format!(
            "\"path.{name}\" = {{ dictionary = \"{name}\", probability = 0.5 }}\n"
        ));
    }
    std::fs::write(scratch.0.join("schemathesis.toml"), config).expect("config");
    let secret = account["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    (ids[2].1.clone(), secret)
}

/// An access token of the service account (client credentials).
async fn service_account_token(app: &TestApp, (id, secret): &(String, String)) -> String {
    app.service_account_token(id, secret).await
}

/// A platform administrator with a session of its own; returns its email and access
/// token.
async fn platform_admin(app: &TestApp) -> (String, String) {
    let (email, tokens) = app.signed_in_user().await;
    let me = keyledger_e2e::body(app.me(&tokens.access_token).await).await;
    let id = me["user_id"]
        .as_str()
        .expect("user id")
        .parse()
        .expect("uuid");
    app.make_platform_admin(id).await;
    (email, tokens.access_token)
}

e2e! { async fn schemathesis_finds_no_server_error_and_no_undocumented_answer(backend) {
    // Sign-in by email on, so that its routes are fuzzed past the switch.
    let app = spawn_app_on_with(backend, |s| s.email_flows.login = true).await;
    let fuzz = Fuzzer {
        app: &app,
        cli: schemathesis(),
        scratch: Scratch::new(),
    };
    let (_, admin) = platform_admin(&app).await;
    let client = organization_fixture(&app, &admin, &fuzz.scratch).await;

    let mut others = Vec::new();
    for path in CALLER_ENDING {
        others.extend(["--exclude-path", path]);
    }
    // A service account's token takes other paths through authentication and the
    // access view than a user's. First: the administrator's run may delete the
    // account or rotate its secret.
    let service = service_account_token(&app, &client).await;
    fuzz.run(
        "the service account",
        &service,
        SERVICE_ACCOUNT_EXAMPLES,
        &others,
    )
    .await;
    fuzz.run("an administrator", &admin, MAX_EXAMPLES, &others)
        .await;

    // A new administrator for each: the main run may have locked the first one out
    // (its password changes with a wrong current password count as failed logins),
    // and each of these runs may suspend, demote or erase its own caller.
    for path in CALLER_ENDING {
        let (_, session) = platform_admin(&app).await;
        fuzz.run(
            "a fresh administrator",
            &session,
            MAX_EXAMPLES,
            &["--include-path", path],
        )
        .await;
    }
}}
