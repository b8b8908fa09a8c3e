//! All end-to-end tests, built into one test binary.

mod auth;
