//! Keyledger's REST API (actix-web) and server assembly.
#![forbid(unsafe_code)]

pub mod browser_session;
pub mod client_address;
pub mod error;
pub mod extract;
pub mod hardening;
pub mod hosted;
pub mod keyset;
pub mod mailer;
pub mod openapi;
pub mod qr;
pub mod queries;
pub mod rate_limit;
pub mod readiness;
pub mod resources;
pub mod settings;
pub mod social_login;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod user_import;

pub use queries::ReadModelQueries;
pub use settings::{MailConfig, Secret, Settings, SettingsError, StorageSettings};
pub use startup::{open_storage, Application, StartupError};
