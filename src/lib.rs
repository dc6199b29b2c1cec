//! Iris: an RFC 8693 token-exchange proxy for the Ory stack.
//!
//! Layout, one module per responsibility:
//! - [`config`]: the YAML file and environment (stage one) validated into [`config::Settings`] (stage two).
//! - [`server`]: listeners, routing, shutdown; [`handlers`] are the thin HTTP adapters.
//! - [`exchange`]: the token-exchange request (form rules, parameters) and the pipeline.
//! - [`clients`]: the client registry and client authentication.
//! - [`policy`]: what a client may ask for (grant, first party, scope, audience, AAL).
//! - [`kratos`]: session resolution at Kratos.
//! - [`keys`] and [`tokens`]: signing keys, the JWKS, and minting access and ID tokens.
//! - [`oauth`]: the one place where errors become RFC 6749 responses.
//! - [`telemetry`]: logging.

pub mod cli;
pub mod clients;
pub mod config;
pub mod exchange;
pub mod handlers;
pub mod keys;
pub mod kratos;
pub mod oauth;
pub mod policy;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod tokens;

pub use server::{App, run};
