//! Integration tests: the real server on port 0, with stand-ins on port 0, in-process.

#[path = "../support/mod.rs"]
mod support;

mod bridge;
mod browser;
mod cli;
mod client_auth;
mod exchange_rules;
mod gateway;
mod health;
mod hostile;
mod hydra_front;
mod hydra_standin;
mod kratos_mapping;
mod modes;
mod operations;
mod policy;
mod session_cache;
mod tokens;
mod upstream_connections;
