//! HMAC signatures on messages that enter through the server.
//!
//! The format, canonical form and replay window are the core's
//! (`dreamos_bridge::security::signing`); this module decides *when* a
//! signature is checked and carries it on the wire:
//!
//! - HTTP `POST /v1/route` and `/v1/publish`: the `X-Bridge-Signature`
//!   header, over the message `id` (which the client then sets in the body,
//!   since the MAC covers it), `destination` and `payload`.
//! - WebSocket `reply` and `error` frames from connected services: a
//!   `"signature"` field, over the id and destination of the message
//!   answered and the reply payload (an `error` frame's payload is
//!   `{"error": "<its message>"}`).
//!
//! With `security.message_signing` configured, a signature that is present
//! is always verified, and `required: true` also refuses unsigned messages.
//! Without it there is no key to check against, so a signature is ignored
//! (the core's `verify_message` would refuse every message).

use dreamos_bridge::{BridgeError, BridgeManager, Message};

/// The HTTP header that carries a message signature.
pub const HEADER: &str = "x-bridge-signature";

/// Can this bridge check signatures (security on, `security.message_signing` set)?
pub fn configured(bridge: &BridgeManager) -> bool {
    let config = bridge.config();
    config.security_enabled() && config.security.as_ref().is_some_and(|s| s.message_signing.is_some())
}

/// Check `msg` against `signature` as configured: verified when signing is
/// configured and a signature is given; refused when none is given and
/// signing is required; otherwise accepted as is.
pub fn check(bridge: &BridgeManager, msg: &Message, signature: Option<&str>, carrier: &str) -> Result<(), BridgeError> {
    if !configured(bridge) {
        return Ok(());
    }
    let security = bridge.security();
    match signature {
        Some(sig) => security.verify_message(msg, sig),
        None if security.signing_required() => Err(BridgeError::unauthenticated(format!(
            "this bridge requires signed messages (security.message_signing.required): send {carrier} \
             (v1,kid=..,ts=..,nonce=..,mac=..; see docs/server.md)"
        ))),
        None => Ok(()),
    }
}
