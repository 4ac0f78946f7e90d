//! API keys: the configuration holds only their SHA-256, never the keys.
//!
//! A presented key is hashed and compared against every configured hash in
//! constant time, without stopping at the first match, so neither the
//! comparison nor the position of the matching entry leaks through timing.
//!
//! A token issued for a key names the key by a fingerprint (derived from its
//! hash, never the key), so that a refresh can find the key again and take
//! its roles as configured now: a key removed or downgraded in the config
//! stops granting through old tokens' refreshes.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::ApiKeyConfig;
use crate::error::{BridgeError, Result};

/// One configured key.
#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    fingerprint: Arc<str>,
    principal: Arc<str>,
    roles: Arc<[Arc<str>]>,
}

/// The configured API keys.
#[derive(Debug, Default)]
pub struct ApiKeys {
    entries: Vec<Entry>,
}

/// Who an API key authenticates.
#[derive(Debug, Clone)]
pub struct KeyIdentity {
    /// Names the key in the tokens issued for it (see [`fingerprint`]).
    pub fingerprint: Arc<str>,
    /// The principal.
    pub principal: Arc<str>,
    /// Its roles.
    pub roles: Arc<[Arc<str>]>,
}

/// The hex SHA-256 of a key, as `security.api_keys[].sha256` expects it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A key's name in its tokens: 16 hex digits of a hash of the key's
/// SHA-256 under a fixed label. It names the configured entry, and reveals
/// nothing about the key or the configured hash.
fn fingerprint(digest: &[u8; 32]) -> Arc<str> {
    let mut h = Sha256::new();
    h.update(b"dreamos-bridge api key fingerprint\0");
    h.update(digest);
    Arc::from(hex::encode(&h.finalize()[..8]))
}

impl ApiKeys {
    /// From `security.api_keys` (hashes already validated as 64 hex digits).
    pub fn new(cfg: &[ApiKeyConfig]) -> Result<Self> {
        let mut entries = Vec::with_capacity(cfg.len());
        for (i, k) in cfg.iter().enumerate() {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(k.sha256.trim(), &mut digest).map_err(|_| {
                BridgeError::config(&format!("security.api_keys[{i}].sha256"), "expected 64 hex digits (a SHA-256)")
            })?;
            entries.push(Entry {
                digest,
                fingerprint: fingerprint(&digest),
                principal: Arc::from(k.principal.as_str()),
                roles: k.roles.iter().map(|r| Arc::from(r.as_str())).collect(),
            });
        }
        Ok(ApiKeys { entries })
    }

    /// Number of configured keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of `key`, or `UNAUTHENTICATED` (the message never
    /// contains the key).
    pub fn authenticate(&self, key: &str) -> Result<KeyIdentity> {
        if key.is_empty() {
            return Err(BridgeError::unauthenticated("the api_key is empty: pass the key issued to this agent"));
        }
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Visit every entry; remember the match with constant-time selects.
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, e) in self.entries.iter().enumerate() {
            let eq = e.digest.ct_eq(&presented);
            index.conditional_assign(&(i as u64), eq);
            found |= eq;
        }
        if bool::from(found) {
            // `index` < len by construction when found.
            Ok(self.entries[index as usize].identity())
        } else {
            Err(BridgeError::unauthenticated(
                "unknown API key: check the key, or add its SHA-256 under security.api_keys (`dreamos-bridge hash-key` prints it)",
            ))
        }
    }
}

impl ApiKeys {
    /// The key a token names by `fingerprint`, as configured now; `None`
    /// when it is no longer configured. (Fingerprints come from signed
    /// tokens, not from guesses, so a plain comparison is fine here.)
    pub fn identity_of(&self, fingerprint: &str) -> Option<KeyIdentity> {
        self.entries.iter().find(|e| &*e.fingerprint == fingerprint).map(Entry::identity)
    }

    /// Does some configured key authenticate as `principal`?
    pub fn has_principal(&self, principal: &str) -> bool {
        self.entries.iter().any(|e| &*e.principal == principal)
    }
}

impl Entry {
    fn identity(&self) -> KeyIdentity {
        KeyIdentity {
            fingerprint: self.fingerprint.clone(),
            principal: self.principal.clone(),
            roles: self.roles.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(&[
            ApiKeyConfig {
                principal: "planner".into(),
                sha256: hash_key("dk_planner_secret"),
                roles: vec!["agent".into()],
            },
            ApiKeyConfig { principal: "ops".into(), sha256: hash_key("dk_ops_secret"), roles: vec!["admin".into()] },
        ])
        .unwrap()
    }

    #[test]
    fn known_keys_authenticate() {
        let k = keys();
        assert_eq!(k.len(), 2);
        let id = k.authenticate("dk_ops_secret").unwrap();
        assert_eq!(&*id.principal, "ops");
        assert_eq!(&*id.roles[0], "admin");
        assert_eq!(&*k.authenticate("dk_planner_secret").unwrap().principal, "planner");
    }

    #[test]
    fn unknown_key_is_refused_without_echoing_it() {
        let e = keys().authenticate("dk_wrong_secret_123").unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::Unauthenticated);
        assert!(!e.message().contains("dk_wrong_secret_123"));
        assert!(keys().authenticate("").is_err());
        assert!(ApiKeys::default().authenticate("anything").is_err());
    }

    #[test]
    fn a_fingerprint_finds_its_key_and_nothing_else() {
        let k = keys();
        let ops = k.authenticate("dk_ops_secret").unwrap();
        assert_eq!(ops.fingerprint.len(), 16);
        assert!(!hash_key("dk_ops_secret").contains(&*ops.fingerprint));
        assert_eq!(&*k.identity_of(&ops.fingerprint).unwrap().principal, "ops");
        assert_ne!(ops.fingerprint, k.authenticate("dk_planner_secret").unwrap().fingerprint);
        assert!(k.identity_of("0000000000000000").is_none());
        assert!(k.has_principal("planner") && !k.has_principal("nobody"));
    }

    #[test]
    fn hash_matches_sha256() {
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn upper_case_hashes_work() {
        let k = ApiKeys::new(&[ApiKeyConfig {
            principal: "p".into(),
            sha256: hash_key("k").to_ascii_uppercase(),
            roles: vec![],
        }])
        .unwrap();
        assert!(k.authenticate("k").is_ok());
    }
}
