//! HMAC-SHA256 signatures on messages that come from outside the process.
//!
//! A bearer token says who is calling; a signature also proves that this
//! exact message was made by a holder of a shared key, recently, and once.
//!
//! # Signature header
//!
//! ```text
//! v1,kid=<key id>,ts=<unix seconds>,nonce=<8-64 chars [A-Za-z0-9_-]>,mac=<64 hex digits>
//! ```
//!
//! # Canonical form (what the MAC covers)
//!
//! The MAC is HMAC-SHA256, keyed with the secret of `kid`, over these seven
//! lines joined by `\n` (no trailing newline):
//!
//! ```text
//! v1
//! {key id}
//! {timestamp, decimal unix seconds}
//! {nonce}
//! {message id, lower-case hyphenated UUID}
//! {destination}
//! {hex SHA-256 of the canonical JSON of the payload}
//! ```
//!
//! Canonical JSON is the payload as JSON (a bytes payload as
//! `{"$bytes": "<standard base64>"}`), serialized with no whitespace, object
//! keys sorted by their UTF-8 bytes at every level, strings and numbers as
//! `serde_json` writes them. Headers and `source` are not covered.
//!
//! # Replay protection
//!
//! A timestamp further than `window` from now is refused. Within the window
//! each `(kid, nonce)` is accepted once: the nonce cache remembers it until
//! its timestamp leaves the window, after which the timestamp check alone
//! refuses a replay. The cache is pruned by time and bounded; when it is full
//! of live nonces new messages get `RATE_LIMITED` rather than a weaker check.
//! Nonces are recorded only after the MAC verifies, so forgeries cannot fill
//! it. MACs are compared in constant time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::tokens::{Refusal, unix_now};
use crate::config::MessageSigningConfig;
use crate::error::{BridgeError, Result};
use crate::message::Message;

type HmacSha256 = Hmac<Sha256>;

/// Live nonces remembered before new signed messages are refused.
const NONCE_CAPACITY: usize = 1_000_000;

struct NonceCache {
    /// `kid\nnonce` to the unix second after which it can be forgotten.
    seen: HashMap<String, u64>,
    last_prune: u64,
}

/// Signs and verifies messages with the configured keys.
pub struct MessageSigner {
    keys: HashMap<String, Vec<u8>>,
    window_secs: u64,
    required: bool,
    nonces: Mutex<NonceCache>,
}

impl std::fmt::Debug for MessageSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageSigner")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("window_secs", &self.window_secs)
            .field("required", &self.required)
            .finish()
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

impl MessageSigner {
    /// From `security.message_signing` (secrets validated: at least 32 bytes).
    pub fn new(cfg: &MessageSigningConfig) -> Result<Self> {
        let mut keys = HashMap::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            if k.id.is_empty() || !k.id.chars().all(is_id_char) {
                return Err(BridgeError::config(
                    &format!("security.message_signing.keys[{i}].id"),
                    "use letters, digits, `_`, `-` and `.` (the id travels in the signature header)",
                ));
            }
            if keys.insert(k.id.clone(), k.secret.expose().as_bytes().to_vec()).is_some() {
                return Err(BridgeError::config(
                    &format!("security.message_signing.keys[{i}].id"),
                    format!("duplicate key id {:?}", k.id),
                ));
            }
        }
        Ok(MessageSigner {
            keys,
            window_secs: cfg.window.get().as_secs().max(1),
            required: cfg.required,
            nonces: Mutex::new(NonceCache { seen: HashMap::new(), last_prune: 0 }),
        })
    }

    /// Must messages from outside the process be signed?
    pub fn required(&self) -> bool {
        self.required
    }

    /// A signature header for `msg` with key `key_id`, now, with a random nonce.
    pub fn sign(&self, key_id: &str, msg: &Message) -> Result<String> {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        self.sign_at(key_id, msg, unix_now(), &hex::encode(nonce))
    }

    /// A signature header with an explicit timestamp and nonce.
    pub fn sign_at(&self, key_id: &str, msg: &Message, ts: u64, nonce: &str) -> Result<String> {
        let secret = self.keys.get(key_id).ok_or_else(|| {
            BridgeError::invalid(format!("no message-signing key {key_id:?} under security.message_signing.keys"))
        })?;
        if !valid_nonce(nonce) {
            return Err(BridgeError::invalid("a nonce is 8 to 64 characters of [A-Za-z0-9_-]"));
        }
        Ok(signature_header(key_id, secret, msg, ts, nonce))
    }

    /// Verify `header` over `msg`: known key, fresh timestamp, MAC, unused nonce.
    pub fn verify(&self, msg: &Message, header: &str) -> std::result::Result<String, Refusal> {
        let sig = parse(header)?;
        let Some(secret) = self.keys.get(sig.kid) else {
            let shown: String = sig.kid.chars().take(64).collect();
            return Err(refusal(
                "unknown signing key",
                format!("the signature names key {shown:?}, which is not under security.message_signing.keys"),
            ));
        };
        let now = unix_now();
        if sig.ts.abs_diff(now) > self.window_secs {
            return Err(refusal(
                "stale timestamp",
                format!(
                    "the signature timestamp is more than {}s from the bridge's clock: sign just before sending and check the clocks",
                    self.window_secs
                ),
            ));
        }
        let expected = mac(secret, &canonical_string(sig.kid, sig.ts, sig.nonce, msg));
        let mut given = [0u8; 32];
        if hex::decode_to_slice(sig.mac, &mut given).is_err() || !bool::from(expected.ct_eq(&given)) {
            return Err(refusal(
                "bad signature",
                "the message signature does not verify (wrong key, or the message was altered after signing)",
            ));
        }
        let mut cache = self.nonces.lock();
        if now > cache.last_prune {
            cache.seen.retain(|_, until| *until >= now);
            cache.last_prune = now;
        }
        let key = format!("{}\n{}", sig.kid, sig.nonce);
        if cache.seen.contains_key(&key) {
            return Err(refusal("replayed", "the message was replayed: this signature nonce was already used"));
        }
        if cache.seen.len() >= NONCE_CAPACITY {
            return Err(Refusal {
                reason: "nonce cache full",
                error: BridgeError::rate_limited(
                    "too many signed messages within the signature window: retry shortly",
                    Duration::from_secs(1),
                ),
            });
        }
        cache.seen.insert(key, sig.ts.saturating_add(self.window_secs));
        Ok(sig.kid.to_string())
    }

    /// Nonces currently remembered.
    pub fn nonce_count(&self) -> usize {
        self.nonces.lock().seen.len()
    }
}

struct Parsed<'a> {
    kid: &'a str,
    ts: u64,
    nonce: &'a str,
    mac: &'a str,
}

fn valid_nonce(n: &str) -> bool {
    (8..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse(header: &str) -> std::result::Result<Parsed<'_>, Refusal> {
    let bad = || {
        refusal(
            "malformed signature",
            "the signature header is malformed: expected v1,kid=<id>,ts=<unix seconds>,nonce=<nonce>,mac=<hex>",
        )
    };
    let mut parts = header.trim().split(',');
    if parts.next() != Some("v1") {
        return Err(bad());
    }
    let (mut kid, mut ts, mut nonce, mut mac) = (None, None, None, None);
    for part in parts {
        let (k, v) = part.split_once('=').ok_or_else(bad)?;
        let slot = match k.trim() {
            "kid" => &mut kid,
            "ts" => &mut ts,
            "nonce" => &mut nonce,
            "mac" => &mut mac,
            _ => return Err(bad()),
        };
        if slot.replace(v.trim()).is_some() {
            return Err(bad());
        }
    }
    let (Some(kid), Some(ts), Some(nonce), Some(mac)) = (kid, ts, nonce, mac) else { return Err(bad()) };
    let ts: u64 = ts.parse().map_err(|_| bad())?;
    if kid.is_empty() || !kid.chars().all(is_id_char) || !valid_nonce(nonce) || mac.len() != 64 {
        return Err(bad());
    }
    Ok(Parsed { kid, ts, nonce, mac })
}

fn refusal(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { reason, error: BridgeError::unauthenticated(message) }
}

fn mac(secret: &[u8], text: &str) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut m =
        <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(text.as_bytes());
    m.finalize().into_bytes().into()
}

/// The signature header for `msg` (for clients in Rust; other languages
/// follow the module documentation).
pub fn signature_header(key_id: &str, secret: &[u8], msg: &Message, ts: u64, nonce: &str) -> String {
    let m = mac(secret, &canonical_string(key_id, ts, nonce, msg));
    format!("v1,kid={key_id},ts={ts},nonce={nonce},mac={}", hex::encode(m))
}

/// The text the MAC covers (see the module documentation).
pub fn canonical_string(key_id: &str, ts: u64, nonce: &str, msg: &Message) -> String {
    let payload = hex::encode(Sha256::digest(canonical_json(&msg.payload.to_json()).as_bytes()));
    let mut s = String::with_capacity(160 + msg.destination.len());
    let _ = write!(s, "v1\n{key_id}\n{ts}\n{nonce}\n{}\n{}\n{payload}", msg.id.hyphenated(), msg.destination);
    s
}

/// JSON with sorted object keys and no whitespace.
pub fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Seconds, Secret, SigningKey};
    use serde_json::json;

    const SECRET: &str = "message-signing-secret-0123456789abcdef";

    fn signer() -> MessageSigner {
        MessageSigner::new(&MessageSigningConfig {
            keys: vec![SigningKey { id: "m1".into(), secret: Secret::new(SECRET) }],
            window: Seconds::from_secs(60),
            required: true,
        })
        .unwrap()
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"z": [true, null, {"y": 2, "x": "é\n"}], "c": 1.5}});
        assert_eq!(canonical_json(&v), r#"{"a":{"c":1.5,"z":[true,null,{"x":"é\n","y":2}]},"b":1}"#);
        // Key order in the input does not matter.
        assert_eq!(canonical_json(&json!({"x": 1, "y": 2})), canonical_json(&json!({"y": 2, "x": 1})));
    }

    #[test]
    fn canonical_string_layout() {
        let msg = Message::new("agents.echo", json!({"hi": 1}));
        let s = canonical_string("m1", 1700000000, "abcdefgh", &msg);
        let lines: Vec<&str> = s.split('\n').collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(&lines[..4], &["v1", "m1", "1700000000", "abcdefgh"]);
        assert_eq!(lines[4], msg.id.to_string());
        assert_eq!(lines[5], "agents.echo");
        assert_eq!(lines[6], hex::encode(Sha256::digest(br#"{"hi":1}"#)));
    }

    #[test]
    fn sign_verify_and_replay() {
        let s = signer();
        let msg = Message::new("agents.echo", json!({"b": 2, "a": 1}));
        let h = s.sign("m1", &msg).unwrap();
        assert!(h.starts_with("v1,kid=m1,ts="));
        assert!(!h.contains(SECRET));
        assert_eq!(s.verify(&msg, &h).unwrap(), "m1");
        let e = s.verify(&msg, &h).unwrap_err();
        assert_eq!(e.reason, "replayed");
        assert!(e.error.message().contains("replayed"));
        assert_eq!(e.error.code(), crate::error::ErrorCode::Unauthenticated);
        assert_eq!(s.nonce_count(), 1);
    }

    #[test]
    fn tampering_and_staleness_are_refused() {
        let s = signer();
        let msg = Message::new("agents.echo", json!({"a": 1}));
        let h = s.sign("m1", &msg).unwrap();
        let mut altered = msg.clone();
        altered.payload = json!({"a": 2}).into();
        assert_eq!(s.verify(&altered, &h).unwrap_err().reason, "bad signature");
        let mut moved = msg.clone();
        moved.destination = "agents.other".into();
        assert_eq!(s.verify(&moved, &h).unwrap_err().reason, "bad signature");
        let old = s.sign_at("m1", &msg, unix_now() - 3600, "nonce-old-1").unwrap();
        assert_eq!(s.verify(&msg, &old).unwrap_err().reason, "stale timestamp");
        let other = signature_header("m1", b"another-secret-0123456789abcdef0123", &msg, unix_now(), "nonce-abc");
        assert_eq!(s.verify(&msg, &other).unwrap_err().reason, "bad signature");
        let unknown = signature_header("m9", SECRET.as_bytes(), &msg, unix_now(), "nonce-abc");
        assert_eq!(s.verify(&msg, &unknown).unwrap_err().reason, "unknown signing key");
        for bad in [
            "",
            "v2,kid=m1",
            "v1,kid=m1,ts=x,nonce=abcdefgh,mac=00",
            "v1,kid=m1,kid=m1",
            "v1,kid=m1,ts=1,nonce=short,mac=00",
        ] {
            assert_eq!(s.verify(&msg, bad).unwrap_err().reason, "malformed signature", "{bad}");
        }
        // Failed attempts leave no nonce behind.
        assert_eq!(s.nonce_count(), 0);
    }

    #[test]
    fn bytes_payloads_are_covered() {
        let s = signer();
        let msg = Message::new("blobs.put", bytes::Bytes::from_static(b"\x00\x01raw"));
        let h = s.sign("m1", &msg).unwrap();
        let mut altered = msg.clone();
        altered.payload = bytes::Bytes::from_static(b"\x00\x02raw").into();
        assert!(s.verify(&altered, &h).is_err());
        assert!(s.verify(&msg, &h).is_ok());
    }

    #[test]
    fn bad_key_ids_are_config_errors() {
        let e = MessageSigner::new(&MessageSigningConfig {
            keys: vec![SigningKey { id: "a,b".into(), secret: Secret::new(SECRET) }],
            window: Seconds::from_secs(60),
            required: false,
        })
        .unwrap_err();
        assert!(e.message().starts_with("security.message_signing.keys[0].id"), "{}", e.message());
    }
}
