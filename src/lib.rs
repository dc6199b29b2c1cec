//! Iris: an RFC 8693 token-exchange proxy for the Ory stack.
//!
//! Layout, one module per responsibility:
//! - [`config`] reads the YAML files and environment (stage one) into [`config::Settings`] (stage two).
//! - [`server`] owns listeners, routing and shutdown; [`handlers`] are the thin HTTP adapters.
//! - [`exchange`] reads the token-exchange request (form rules, parameters) and runs the pipeline.
//! - [`clients`] holds the client registry and authenticates clients.
//! - [`policy`] decides what a client may ask for (grant, first party, scope, audience, AAL).
//! - [`kratos`] resolves sessions at Kratos; [`hydra`] reads Hydra's clients, discovery and
//!   JWKS and runs forward mode's jwt-bearer grant; [`proxy`] passes everything else to Hydra.
//! - [`keys`] and [`tokens`] handle signing keys, the JWKS, and minting access and ID tokens.
//! - [`upstream`] builds the HTTP clients for Kratos and Hydra.
//! - [`oauth`] is the one place where errors become RFC 6749 responses.
//! - [`bridge`] is the session bridge for first-party SPAs; [`store`] keeps one-time values.
//! - [`telemetry`] sets up logging and request ids; [`metrics`] counts for Prometheus.

pub mod bridge;
pub mod cli;
pub mod clients;
pub mod config;
pub mod exchange;
pub mod handlers;
pub mod hydra;
pub mod keys;
pub mod kratos;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod upstream;

pub use server::{App, run};
