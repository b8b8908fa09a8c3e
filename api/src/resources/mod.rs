//! The HTTP resources, one module each: its handlers and the registration of its
//! routes.

pub mod access;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod invitations;
pub mod organizations;
