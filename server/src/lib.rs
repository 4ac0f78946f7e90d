//! # dreamos-bridge-server
//!
//! The bridge as a network service: an HTTP API for out-of-process agents,
//! a WebSocket protocol for external services that serve subject patterns,
//! Prometheus metrics and a dashboard. The `dreamos-bridge` binary (CLI)
//! is built on this library; tests and embedders start a server with
//! [`serve`] or [`Server`].
//!
//! Everything that is not HTTP lives in the core engine
//! ([`dreamos_bridge::BridgeManager`]); this crate converts and calls it.
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod client;
pub mod commands;
pub mod dispatch;
pub mod error;
pub mod hub;
pub mod plain_proxy;
pub mod server;
pub mod signing;
pub mod state;
pub mod tls;
mod write_timeout;
pub mod ws;

pub use commands::run;
pub use hub::{ConnectedServiceHandler, ServiceHub};
pub use server::{Server, check_exposure, serve};
pub use state::ServerOptions;
