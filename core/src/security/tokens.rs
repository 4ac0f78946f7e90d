//! Bridge tokens: short-lived HS256 JWTs the bridge issues and verifies.
//!
//! The first of `security.signing_keys` signs (its id goes into the `kid`
//! header); every listed key verifies, so a key is rotated by putting a new
//! one first and removing the old one after `token_expiry`. With security on
//! and no keys, a random 32-byte key is made at start and tokens hold for
//! this process only.
//!
//! Verification is on the hot path of every call. A verified token is cached
//! under the SHA-256 of its text (the cache never holds the token itself),
//! so a repeat costs one hash, one map lookup and an expiry check; the
//! revocation set is only consulted when it is non-empty. Cache entries
//! carry the token's expiry and are dropped when they pass it; the cache is
//! bounded. The slow path accepts exactly HS256 (never `none`, never an
//! asymmetric algorithm, so an RSA public key can never serve as an HMAC
//! secret), a known `kid`, a valid signature, issuer `dreamos-bridge`, and
//! an unexpired `exp` (with a few seconds of leeway for clock skew between
//! bridges that share keys).
//!
//! Revocation is by `jti` and lasts until the token's own expiry, after
//! which the entry is pruned (an expired token is refused anyway).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::RwLock;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Principal, Token};
use crate::config::SigningKey;
use crate::error::{BridgeError, Result};

/// `iss` of every bridge token.
pub const ISSUER: &str = "dreamos-bridge";
/// Clock skew tolerated on `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
/// Verified tokens kept in the cache.
const CACHE_CAPACITY: usize = 16_384;

/// The claims of a bridge token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The principal.
    pub sub: String,
    /// Granted roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Token id (UUID), the handle for revocation.
    pub jti: String,
    /// Always [`ISSUER`].
    pub iss: String,
    /// Latest expiry a refresh may give (tokens from an OIDC login never
    /// outlive the external token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_exp: Option<u64>,
}

/// A refused token: the caller's error and the audit reason.
#[derive(Debug)]
pub struct Refusal {
    /// Fixed phrase for the audit record.
    pub reason: &'static str,
    /// What the caller sees.
    pub error: BridgeError,
}

impl Refusal {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal { reason, error: BridgeError::unauthenticated(message) }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A SHA-256 used as a map key: it is already uniformly distributed, so
/// hashing it again would only cost time.
#[derive(Clone, Copy, PartialEq, Eq)]
struct TokenDigest([u8; 32]);

impl Hash for TokenDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if a key type other than TokenDigest is used.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DigestMap<V> = HashMap<TokenDigest, V, BuildHasherDefault<PassThrough>>;

struct CacheEntry {
    principal: Arc<Principal>,
    jti: Uuid,
}

/// The header fields the allow-list needs, read before any signature check.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Issues, verifies, caches and revokes bridge tokens.
pub struct TokenService {
    signing_kid: String,
    /// False when the key is the random process-only one.
    configured: bool,
    signing_key: EncodingKey,
    verify_keys: HashMap<String, DecodingKey>,
    expiry_secs: u64,
    validation: Validation,
    cache: RwLock<DigestMap<CacheEntry>>,
    /// jti to the token's expiry.
    revoked: RwLock<HashMap<Uuid, u64>>,
    revoked_len: AtomicUsize,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.verify_keys.keys().collect();
        kids.sort();
        f.debug_struct("TokenService")
            .field("signing_kid", &self.signing_kid)
            .field("verify_kids", &kids)
            .field("expiry_secs", &self.expiry_secs)
            .finish()
    }
}

impl TokenService {
    /// From `security.signing_keys` (validated: at least 32 bytes, unique ids)
    /// and `security.token_expiry`. No keys: a random process-only key.
    pub fn new(keys: &[SigningKey], expiry_secs: u64) -> Self {
        let (signing_kid, signing_secret, verify_keys) = match keys.first() {
            Some(first) => (
                first.id.clone(),
                first.secret.expose().as_bytes().to_vec(),
                keys.iter().map(|k| (k.id.clone(), DecodingKey::from_secret(k.secret.expose().as_bytes()))).collect(),
            ),
            None => {
                let mut secret = vec![0u8; 32];
                rand::rng().fill_bytes(&mut secret);
                let kid = "ephemeral".to_string();
                let verify = HashMap::from([(kid.clone(), DecodingKey::from_secret(&secret))]);
                (kid, secret, verify)
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        TokenService {
            configured: !keys.is_empty(),
            signing_kid,
            signing_key: EncodingKey::from_secret(&signing_secret),
            verify_keys,
            expiry_secs: expiry_secs.max(1),
            validation,
            cache: RwLock::new(DigestMap::default()),
            revoked: RwLock::new(HashMap::new()),
            revoked_len: AtomicUsize::new(0),
        }
    }

    /// The id of the key that signs new tokens.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// Issue a token for `principal` with `roles`, expiring after
    /// `token_expiry` or at `max_exp`, whichever comes first.
    pub fn issue(&self, principal: &Arc<str>, roles: &Arc<[Arc<str>]>, max_exp: Option<u64>) -> Result<Token> {
        self.issue_for(principal, roles, self.expiry_secs, max_exp)
    }

    /// Are the signing keys from the config (not the random process-only
    /// key), so that another process with the same config accepts tokens
    /// signed here?
    pub fn keys_configured(&self) -> bool {
        self.configured
    }

    /// Issue a token that lives `ttl_secs` (at least 1), capped by `max_exp`.
    pub fn issue_for(
        &self,
        principal: &Arc<str>,
        roles: &Arc<[Arc<str>]>,
        ttl_secs: u64,
        max_exp: Option<u64>,
    ) -> Result<Token> {
        let now = unix_now();
        let mut exp = now.saturating_add(ttl_secs.max(1));
        if let Some(m) = max_exp {
            exp = exp.min(m);
        }
        let jti = Uuid::now_v7();
        let claims = Claims {
            sub: principal.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iat: now,
            exp,
            jti: jti.to_string(),
            iss: ISSUER.to_string(),
            max_exp,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        let value = jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map_err(|e| BridgeError::internal(format!("cannot sign a bridge token: {e}")))?;
        // Pre-cache: the first call with the new token is as cheap as the rest.
        let principal_arc = Arc::new(Principal { name: principal.clone(), roles: roles.clone(), expires_at: exp });
        self.insert(digest(&value), CacheEntry { principal: principal_arc, jti }, now);
        Ok(Token { value, principal: claims.sub, roles: claims.roles, expires_at: exp })
    }

    /// Verify a token: the hot path.
    #[inline]
    pub fn verify(&self, token: &str) -> std::result::Result<Arc<Principal>, Refusal> {
        let key = digest(token);
        let now = unix_now();
        if let Some(e) = self.cache.read().get(&key)
            && now <= e.principal.expires_at.saturating_add(LEEWAY_SECS)
            && (self.revoked_len.load(Ordering::Acquire) == 0 || !self.revoked.read().contains_key(&e.jti))
        {
            return Ok(e.principal.clone());
        }
        self.verify_slow(token, key, now)
    }

    #[cold]
    fn verify_slow(&self, token: &str, key: TokenDigest, now: u64) -> std::result::Result<Arc<Principal>, Refusal> {
        let claims = self.decode(token, true)?;
        let jti = parse_jti(&claims.jti)?;
        let principal = Arc::new(Principal {
            name: Arc::from(claims.sub.as_str()),
            roles: claims.roles.iter().map(|r| Arc::from(r.as_str())).collect(),
            expires_at: claims.exp,
        });
        // Check revocation and insert under the cache lock, so a concurrent
        // revoke (which marks first, then purges the cache) cannot be missed.
        let mut cache = self.cache.write();
        if self.revoked.read().contains_key(&jti) {
            cache.remove(&key);
            return Err(Refusal::new("revoked", "the token was revoked: authenticate again for a new one"));
        }
        if cache.len() >= CACHE_CAPACITY {
            prune(&mut cache, now);
        }
        cache.insert(key, CacheEntry { principal: principal.clone(), jti });
        Ok(principal)
    }

    /// Signature, algorithm, key id and claims; `check_exp` off for revoke.
    fn decode(&self, token: &str, check_exp: bool) -> std::result::Result<Claims, Refusal> {
        let header = read_header(token)?;
        if header.alg != "HS256" {
            let alg: String = header.alg.chars().take(16).collect();
            return Err(Refusal::new(
                "algorithm not allowed",
                format!(
                    "token algorithm {alg:?} is not accepted: bridge tokens are HS256; call authenticate() for one"
                ),
            ));
        }
        let Some(kid) = header.kid else {
            return Err(Refusal::new(
                "missing kid",
                "the token has no `kid` header, so it is not a bridge token: call authenticate() for one",
            ));
        };
        let Some(dk) = self.verify_keys.get(&kid) else {
            let kid: String = kid.chars().take(64).collect();
            return Err(Refusal::new(
                "unknown kid",
                format!(
                    "token key id {kid:?} is not among security.signing_keys (the key was retired, or the token is from another bridge): authenticate again"
                ),
            ));
        };
        let mut validation = self.validation.clone();
        validation.validate_exp = check_exp;
        if !check_exp {
            validation.required_spec_claims.remove("exp");
        }
        jsonwebtoken::decode::<Claims>(token, dk, &validation).map(|d| d.claims).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => Refusal::new(
                "expired",
                "the token has expired: call refresh() before it expires, or authenticate() again",
            ),
            ErrorKind::InvalidSignature => Refusal::new(
                "bad signature",
                "the token signature does not verify (wrong key, or the token was altered): authenticate again",
            ),
            ErrorKind::InvalidIssuer => Refusal::new(
                "wrong issuer",
                "the token was not issued by a dreamos bridge: call authenticate() for one",
            ),
            ErrorKind::InvalidAlgorithm => {
                Refusal::new("algorithm not allowed", "token algorithm is not accepted: bridge tokens are HS256")
            }
            _ => malformed(),
        })
    }

    /// Revoke `token` until it expires. An expired token needs nothing; a
    /// token that does not verify is refused.
    pub fn revoke(&self, token: &str) -> std::result::Result<Option<Arc<str>>, Refusal> {
        let claims = self.decode(token, false)?;
        let jti = parse_jti(&claims.jti)?;
        let now = unix_now();
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Ok(None);
        }
        self.mark_revoked(jti, claims.exp, now);
        Ok(Some(Arc::from(claims.sub.as_str())))
    }

    /// Verify `token`, issue a new one for the same principal and roles, and
    /// revoke the old one. A token can be refreshed once.
    pub fn refresh(&self, token: &str) -> std::result::Result<Token, Refusal> {
        self.verify(token)?;
        let claims = self.decode(token, true)?;
        let jti = parse_jti(&claims.jti)?;
        let now = unix_now();
        if !self.mark_revoked(jti, claims.exp, now) {
            return Err(Refusal::new("revoked", "the token was already refreshed or revoked: authenticate again"));
        }
        let principal: Arc<str> = Arc::from(claims.sub.as_str());
        let roles: Arc<[Arc<str>]> = claims.roles.iter().map(|r| Arc::from(r.as_str())).collect();
        self.issue(&principal, &roles, claims.max_exp).map_err(|error| Refusal { reason: "internal", error })
    }

    /// Returns false if `jti` was already revoked.
    fn mark_revoked(&self, jti: Uuid, exp: u64, now: u64) -> bool {
        let fresh = {
            let mut revoked = self.revoked.write();
            revoked.retain(|_, e| e.saturating_add(LEEWAY_SECS) >= now);
            let fresh = revoked.insert(jti, exp).is_none();
            self.revoked_len.store(revoked.len(), Ordering::Release);
            fresh
        };
        self.cache.write().retain(|_, e| e.jti != jti);
        fresh
    }

    /// Tokens currently revoked (and not yet expired).
    pub fn revoked_count(&self) -> usize {
        self.revoked_len.load(Ordering::Acquire)
    }

    /// Tokens in the verification cache.
    pub fn cached_count(&self) -> usize {
        self.cache.read().len()
    }

    fn insert(&self, key: TokenDigest, entry: CacheEntry, now: u64) {
        let mut cache = self.cache.write();
        if cache.len() >= CACHE_CAPACITY {
            prune(&mut cache, now);
        }
        cache.insert(key, entry);
    }
}

/// Drop expired entries; if the cache is still full, drop an arbitrary
/// eighth of it (those tokens just take the slow path once more).
fn prune(cache: &mut DigestMap<CacheEntry>, now: u64) {
    cache.retain(|_, e| e.principal.expires_at.saturating_add(LEEWAY_SECS) >= now);
    if cache.len() >= CACHE_CAPACITY {
        let victims: Vec<TokenDigest> = cache.keys().take(CACHE_CAPACITY / 8).copied().collect();
        for k in victims {
            cache.remove(&k);
        }
    }
}

fn digest(token: &str) -> TokenDigest {
    TokenDigest(Sha256::digest(token.as_bytes()).into())
}

fn malformed() -> Refusal {
    Refusal::new("malformed", "the token is malformed (not a bridge JWT): pass the `value` returned by authenticate()")
}

fn parse_jti(jti: &str) -> std::result::Result<Uuid, Refusal> {
    Uuid::parse_str(jti).map_err(|_| malformed())
}

/// Read the JOSE header without trusting anything in it yet.
fn read_header(token: &str) -> std::result::Result<RawHeader, Refusal> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| malformed())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed())
}

/// Read only the JOSE header's `alg` and `kid` (for OIDC).
pub(crate) fn header_alg_kid(token: &str) -> std::result::Result<(String, Option<String>), Refusal> {
    read_header(token).map(|h| (h.alg, h.kid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const K1: &str = "k1-secret-0123456789abcdef0123456789abcdef";
    const K2: &str = "k2-secret-0123456789abcdef0123456789abcdef";

    fn key(id: &str, secret: &str) -> SigningKey {
        SigningKey { id: id.into(), secret: Secret::new(secret) }
    }

    fn roles(r: &[&str]) -> Arc<[Arc<str>]> {
        r.iter().map(|s| Arc::from(*s)).collect()
    }

    fn forge(kid: &str, secret: &[u8], claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn claims(exp: u64) -> serde_json::Value {
        serde_json::json!({"sub": "p", "roles": ["agent"], "iat": unix_now(), "exp": exp, "jti": Uuid::now_v7().to_string(), "iss": ISSUER})
    }

    #[test]
    fn issue_then_verify() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        let t = s.issue(&Arc::from("planner"), &roles(&["agent"]), None).unwrap();
        assert_eq!(t.principal, "planner");
        assert!(t.expires_at >= unix_now() + 59);
        let p = s.verify(&t.value).unwrap();
        assert_eq!(&*p.name, "planner");
        assert_eq!(&*p.roles[0], "agent");
        // A second service with the same key verifies it from scratch.
        let other = TokenService::new(&[key("k1", K1)], 60);
        assert_eq!(&*other.verify(&t.value).unwrap().name, "planner");
        // The cache hands out the same allocation.
        assert!(Arc::ptr_eq(&other.verify(&t.value).unwrap(), &other.verify(&t.value).unwrap()));
    }

    #[test]
    fn rotation_old_key_still_verifies() {
        let old = TokenService::new(&[key("k1", K1)], 60);
        let t = old.issue(&Arc::from("p"), &roles(&[]), None).unwrap();
        let rotated = TokenService::new(&[key("k2", K2), key("k1", K1)], 60);
        assert!(rotated.verify(&t.value).is_ok());
        let new = rotated.issue(&Arc::from("p"), &roles(&[]), None).unwrap();
        let header = jsonwebtoken::decode_header(&new.value).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k2"));
        // After retiring k1, its tokens are refused as unknown kid.
        let retired = TokenService::new(&[key("k2", K2)], 60);
        assert_eq!(retired.verify(&t.value).unwrap_err().reason, "unknown kid");
        assert!(retired.verify(&new.value).is_ok());
    }

    #[test]
    fn refusals() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        assert_eq!(s.verify("").unwrap_err().reason, "malformed");
        assert_eq!(s.verify("a.b.c").unwrap_err().reason, "malformed");
        assert_eq!(s.verify("a.b").unwrap_err().reason, "malformed");
        let expired = forge("k1", K1.as_bytes(), &claims(unix_now() - 100));
        assert_eq!(s.verify(&expired).unwrap_err().reason, "expired");
        let wrong = forge("k1", K2.as_bytes(), &claims(unix_now() + 100));
        assert_eq!(s.verify(&wrong).unwrap_err().reason, "bad signature");
        let unknown = forge("k9", K1.as_bytes(), &claims(unix_now() + 100));
        assert_eq!(s.verify(&unknown).unwrap_err().reason, "unknown kid");
        // alg: none, hand-built.
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let c = URL_SAFE_NO_PAD.encode(claims(unix_now() + 100).to_string());
        let none = format!("{h}.{c}.");
        let e = s.verify(&none).unwrap_err();
        assert_eq!(e.reason, "algorithm not allowed");
        assert_eq!(e.error.code(), crate::error::ErrorCode::Unauthenticated);
        // Other issuer.
        let mut c = claims(unix_now() + 100);
        c["iss"] = "someone-else".into();
        assert_eq!(s.verify(&forge("k1", K1.as_bytes(), &c)).unwrap_err().reason, "wrong issuer");
        // No secret in any message.
        for t in [&expired, &wrong, &unknown, &none] {
            let m = s.verify(t).unwrap_err().error.message().to_string();
            assert!(!m.contains(K1) && !m.contains(K2), "{m}");
        }
    }

    #[test]
    fn revoke_and_refresh() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        let t = s.issue(&Arc::from("p"), &roles(&["agent"]), None).unwrap();
        assert!(s.verify(&t.value).is_ok());
        let t2 = s.refresh(&t.value).unwrap();
        assert_eq!(s.verify(&t.value).unwrap_err().reason, "revoked");
        assert!(s.refresh(&t.value).is_err());
        assert_eq!(&*s.verify(&t2.value).unwrap().roles[0], "agent");
        assert_eq!(s.revoke(&t2.value).unwrap().as_deref(), Some("p"));
        assert_eq!(s.verify(&t2.value).unwrap_err().reason, "revoked");
        assert_eq!(s.revoked_count(), 2);
        // Revoking an expired token is a no-op; a forged one is refused.
        let expired = forge("k1", K1.as_bytes(), &claims(unix_now() - 100));
        assert!(s.revoke(&expired).unwrap().is_none());
        assert!(s.revoke(&forge("k1", K2.as_bytes(), &claims(unix_now() + 100))).is_err());
    }

    #[test]
    fn revocations_are_pruned_after_expiry() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        let now = unix_now();
        s.mark_revoked(Uuid::now_v7(), now - 100, now);
        assert_eq!(s.revoked_count(), 1);
        s.mark_revoked(Uuid::now_v7(), now + 100, now);
        assert_eq!(s.revoked_count(), 1);
    }

    #[test]
    fn max_exp_caps_lifetime() {
        let s = TokenService::new(&[key("k1", K1)], 3600);
        let cap = unix_now() + 30;
        let t = s.issue(&Arc::from("p"), &roles(&[]), Some(cap)).unwrap();
        assert_eq!(t.expires_at, cap);
        assert_eq!(s.refresh(&t.value).unwrap().expires_at, cap);
    }

    #[test]
    fn random_key_without_config() {
        let a = TokenService::new(&[], 60);
        let b = TokenService::new(&[], 60);
        let t = a.issue(&Arc::from("p"), &roles(&[]), None).unwrap();
        assert!(a.verify(&t.value).is_ok());
        assert_eq!(b.verify(&t.value).unwrap_err().reason, "bad signature");
    }

    #[test]
    fn cache_stays_bounded() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        for i in 0..CACHE_CAPACITY + 10 {
            let mut c = claims(unix_now() + 100);
            c["sub"] = format!("p{i}").into();
            let t = forge("k1", K1.as_bytes(), &c);
            assert!(s.verify(&t).is_ok());
        }
        assert!(s.cached_count() <= CACHE_CAPACITY);
    }
}
