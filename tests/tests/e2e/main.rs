//! All end-to-end tests, built into one test binary (one link, shared harness).

mod audit;
mod auth;
mod breached_passwords;
mod catalogue;
mod email_flows;
mod erasure;
mod erasure_storage;
mod evolution;
mod export;
mod feed;
mod hardening;
mod invitations;
mod legacy_hashes;
mod lockout;
mod nats_fanout;
mod openapi;
mod organizations;
mod password_change;
mod platform_admins;
mod rate_limits;
mod replay;
mod schemathesis;
mod scoped_tokens;
mod session_levers;
mod tamper;
mod token_acceptance;
