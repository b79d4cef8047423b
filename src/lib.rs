//! Herald: a webhook server.
//!
//! A host application reports events; Herald stores each one with a delivery per
//! subscribed endpoint, POSTs it as signed JSON, retries failures on a schedule and
//! records every attempt. The crate is laid out by subsystem:
//!
//! - [`api`]: the HTTP API under `/api/v1` (never makes an outbound call itself, except
//!   through the engine's guarded client for the URL check and test webhooks);
//! - [`engine`]: the delivery engine that claims due deliveries and attempts them;
//! - [`store`]: the database, the only place state lives;
//! - [`auth`]: API tokens, password hashes and signing in;
//! - [`alerts`] and [`mail`]: telling super admins about failing endpoints by e-mail;
//! - [`console`]: the web console at `/`, which acts only through the API's functions;
//! - [`cli`]: the `herald` command line, including the local `listen` receiver;
//! - [`settings`]: flags, environment and the settings file, merged once at start.
//!
//! The binary in `src/main.rs` only parses arguments and calls [`cli::run`].

pub mod alerts;
pub mod api;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod console;
pub mod engine;
pub mod ids;
pub mod mail;
pub mod model;
pub mod payload;
pub mod retention;
pub mod secrets;
pub mod server;
pub mod settings;
pub mod signing;
pub mod store;
