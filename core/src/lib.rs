//! # dreamos-bridge
//!
//! The engine through which Dream.OS agents reach external services and each
//! other. One [`BridgeManager`] authenticates the caller, authorizes the
//! destination, rate-limits, routes by subject pattern, delivers to an
//! in-process handler or an HTTP service, records metrics, and returns one
//! reply or one typed [`BridgeError`].
//!
//! ```
//! use dreamos_bridge::{BridgeManager, Message, handler_fn};
//! use serde_json::json;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let bridge = BridgeManager::new_default();
//! bridge.initialize().await?;
//! bridge.register_route("agents.echo", handler_fn(|msg: Message| async move { Ok(msg.payload) }))?;
//! let reply = bridge.route(Message::new("agents.echo", json!({"hi": 1})), Default::default()).await?;
//! assert_eq!(reply.as_json(), Some(&json!({"hi": 1})));
//! bridge.shutdown().await;
//! # Ok::<(), dreamos_bridge::BridgeError>(())
//! # }).unwrap();
//! ```
#![warn(missing_docs)]

pub mod bridge;
pub mod config;
pub mod connection;
pub mod error;
pub mod message;
pub mod metrics;
pub mod routing;
pub mod security;

pub use bridge::{
    AnswerNow, BridgeManager, CallOptions, DeadLetter, Handler, HealthReport, handler_fn, sync_handler_fn,
};
pub use config::BridgeConfig;
pub use error::{BridgeError, ErrorCode, Result};
pub use message::{Message, Payload};
pub use security::{Action, Credentials, Principal, Token};
