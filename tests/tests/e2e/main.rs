//! All end-to-end tests, built into one test binary (one link, shared harness).

mod audit;
mod auth;
mod catalogue;
mod erasure;
mod erasure_storage;
mod evolution;
mod export;
mod feed;
mod nats_fanout;
mod openapi;
mod organizations;
mod replay;
mod schemathesis;
mod tamper;
