//! `keyledger`: the authentication server.

use keyledger_api::{Application, Settings};
use tracing_subscriber::EnvFilter;

fn init_logging() {
    let filter = EnvFilter::try_from_env("KEYLEDGER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("KEYLEDGER_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        // Span fields (request_id, method, path) go on every line.
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keyledger: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("keyledger: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("keyledger: listening on http://127.0.0.1:{}", app.port());
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyledger: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
