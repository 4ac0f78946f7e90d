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
//! A refresh replaces a token with a new one of the same chain (claim
//! `fam`, the `jti` of the chain's first token). It re-derives the roles: a
//! token issued for an API key names the key (claim `key`, a fingerprint),
//! and the refresh takes the key's roles as configured now, or is refused
//! if the key is gone; the caller decides this ([`TokenService::refresh`]).
//!
//! Revocation: a refresh revokes the replaced token by `jti`, until the
//! token's own expiry. `revoke` revokes the whole chain, every token
//! refreshed from the one presented included, until the last token the
//! chain could hold has expired (`token_expiry` from now). Entries are
//! pruned after that, at most once a second; an expired token is refused
//! anyway.

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
    /// The refresh chain: the `jti` of its first token (absent in tokens
    /// from before chains: the token's own `jti`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
    /// The fingerprint of the API key the chain was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Claims {
    /// The chain this token belongs to.
    fn family(&self) -> std::result::Result<Uuid, Refusal> {
        parse_jti(self.fam.as_deref().unwrap_or(&self.jti))
    }
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
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
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
    family: Uuid,
}

/// Revoked tokens and chains, each with the time after which its entry
/// can go (no token it covers can still be valid).
#[derive(Default)]
struct Revocations {
    tokens: HashMap<Uuid, u64>,
    families: HashMap<Uuid, u64>,
    /// When expired entries were last dropped (Unix seconds).
    pruned_at: u64,
}

impl Revocations {
    fn covers(&self, jti: &Uuid, family: &Uuid) -> bool {
        self.tokens.contains_key(jti) || self.families.contains_key(family)
    }

    /// Drop the entries whose tokens have all expired, at most once a
    /// second (revokes and refreshes would otherwise each scan them all).
    fn prune(&mut self, now: u64) {
        if now > self.pruned_at {
            self.pruned_at = now;
            self.tokens.retain(|_, until| until.saturating_add(LEEWAY_SECS) >= now);
            self.families.retain(|_, until| until.saturating_add(LEEWAY_SECS) >= now);
        }
    }

    fn len(&self) -> usize {
        self.tokens.len() + self.families.len()
    }
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
    revoked: RwLock<Revocations>,
    /// Entries in `revoked`: the hot path reads the set only when non-zero.
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
            revoked: RwLock::new(Revocations::default()),
            revoked_len: AtomicUsize::new(0),
        }
    }

    /// The id of the key that signs new tokens.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// Issue a token for `principal` with `roles`, expiring after
    /// `token_expiry` or at `max_exp`, whichever comes first; `key`: the
    /// fingerprint of the API key it is issued for.
    pub fn issue(
        &self,
        principal: &Arc<str>,
        roles: &Arc<[Arc<str>]>,
        max_exp: Option<u64>,
        key: Option<&str>,
    ) -> Result<Token> {
        self.mint(principal, roles, self.expiry_secs, max_exp, key, None)
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
        self.mint(principal, roles, ttl_secs, max_exp, None, None)
    }

    /// A new token; `family`: the chain it continues (`None`: it starts one).
    fn mint(
        &self,
        principal: &Arc<str>,
        roles: &Arc<[Arc<str>]>,
        ttl_secs: u64,
        max_exp: Option<u64>,
        key: Option<&str>,
        family: Option<Uuid>,
    ) -> Result<Token> {
        let now = unix_now();
        let mut exp = now.saturating_add(ttl_secs.max(1));
        if let Some(m) = max_exp {
            exp = exp.min(m);
        }
        let jti = Uuid::now_v7();
        let family = family.unwrap_or(jti);
        let claims = Claims {
            sub: principal.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iat: now,
            exp,
            jti: jti.to_string(),
            iss: ISSUER.to_string(),
            max_exp,
            fam: Some(family.to_string()),
            key: key.map(str::to_string),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        let value = jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map_err(|e| BridgeError::internal(format!("cannot sign a bridge token: {e}")))?;
        // Pre-cache: the first call with the new token is as cheap as the rest.
        let principal_arc = Arc::new(Principal { name: principal.clone(), roles: roles.clone(), expires_at: exp });
        self.insert(digest(&value), CacheEntry { principal: principal_arc, jti, family }, now);
        Ok(Token { value, principal: claims.sub, roles: claims.roles, expires_at: exp })
    }

    /// Verify a token: the hot path.
    #[inline]
    pub fn verify(&self, token: &str) -> std::result::Result<Arc<Principal>, Refusal> {
        let key = digest(token);
        let now = unix_now();
        if let Some(e) = self.cache.read().get(&key)
            && now <= e.principal.expires_at.saturating_add(LEEWAY_SECS)
            && (self.revoked_len.load(Ordering::Acquire) == 0 || !self.revoked.read().covers(&e.jti, &e.family))
        {
            return Ok(e.principal.clone());
        }
        self.verify_slow(token, key, now)
    }

    #[cold]
    fn verify_slow(&self, token: &str, key: TokenDigest, now: u64) -> std::result::Result<Arc<Principal>, Refusal> {
        let claims = self.decode(token, true)?;
        let jti = parse_jti(&claims.jti)?;
        let family = claims.family()?;
        let principal = Arc::new(Principal {
            name: Arc::from(claims.sub.as_str()),
            roles: claims.roles.iter().map(|r| Arc::from(r.as_str())).collect(),
            expires_at: claims.exp,
        });
        // Check revocation and insert under the cache lock; a revoke after
        // this is caught by the check every cache hit makes.
        let mut cache = self.cache.write();
        if self.revoked.read().covers(&jti, &family) {
            cache.remove(&key);
            return Err(Refusal::new("revoked", "the token was revoked: authenticate again for a new one"));
        }
        if cache.len() >= CACHE_CAPACITY {
            prune(&mut cache, now);
        }
        cache.insert(key, CacheEntry { principal: principal.clone(), jti, family });
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

    /// Revoke `token` and its whole refresh chain: the tokens it was
    /// refreshed from and, above all, those refreshed from it, so that a
    /// leaked token is dead with everything it produced. The token may have
    /// expired (what it produced may not have); one that does not verify
    /// is refused. The principal it named, for the audit.
    pub fn revoke(&self, token: &str) -> std::result::Result<Arc<str>, Refusal> {
        let claims = self.decode(token, false)?;
        let family = claims.family()?;
        let now = unix_now();
        // No token of the chain outlives this: a refresh from now on is
        // refused, every token refreshed expires within `token_expiry`, and
        // the one presented (an operator's may live longer) at its `exp`.
        let until = now.saturating_add(self.expiry_secs).max(claims.exp);
        self.update_revoked(now, |r| {
            let e = r.families.entry(family).or_insert(until);
            *e = (*e).max(until);
        });
        Ok(Arc::from(claims.sub.as_str()))
    }

    /// Verify `token` and replace it with a new token of its chain, for the
    /// same principal with the roles `roles_now` gives from its claims (the
    /// roles it should have under the current config, or a refusal); the
    /// old token is revoked. A token can be refreshed once.
    pub fn refresh(
        &self,
        token: &str,
        roles_now: impl FnOnce(&Claims) -> std::result::Result<Arc<[Arc<str>]>, Refusal>,
    ) -> std::result::Result<Token, Refusal> {
        self.verify(token)?;
        let claims = self.decode(token, true)?;
        let jti = parse_jti(&claims.jti)?;
        let family = claims.family()?;
        let roles = roles_now(&claims)?;
        let now = unix_now();
        let fresh = self.update_revoked(now, |r| r.tokens.insert(jti, claims.exp).is_none());
        if !fresh {
            return Err(Refusal::new("revoked", "the token was already refreshed or revoked: authenticate again"));
        }
        let principal: Arc<str> = Arc::from(claims.sub.as_str());
        self.mint(&principal, &roles, self.expiry_secs, claims.max_exp, claims.key.as_deref(), Some(family))
            .map_err(|error| Refusal { reason: "internal", error })
    }

    /// Change the revocations (pruning them first). The verify cache needs
    /// no purge: its hits consult the revocations whenever there are any.
    fn update_revoked<T>(&self, now: u64, change: impl FnOnce(&mut Revocations) -> T) -> T {
        let mut revoked = self.revoked.write();
        revoked.prune(now);
        let out = change(&mut revoked);
        self.revoked_len.store(revoked.len(), Ordering::Release);
        out
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
        let t = s.issue(&Arc::from("planner"), &roles(&["agent"]), None, None).unwrap();
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
        let t = old.issue(&Arc::from("p"), &roles(&[]), None, None).unwrap();
        let rotated = TokenService::new(&[key("k2", K2), key("k1", K1)], 60);
        assert!(rotated.verify(&t.value).is_ok());
        let new = rotated.issue(&Arc::from("p"), &roles(&[]), None, None).unwrap();
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

    /// The roles a refresh keeps: those of the old token.
    fn same_roles(c: &Claims) -> std::result::Result<Arc<[Arc<str>]>, Refusal> {
        Ok(c.roles.iter().map(|r| Arc::from(r.as_str())).collect())
    }

    #[test]
    fn revoke_and_refresh() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        let t = s.issue(&Arc::from("p"), &roles(&["agent"]), None, None).unwrap();
        assert!(s.verify(&t.value).is_ok());
        let t2 = s.refresh(&t.value, same_roles).unwrap();
        assert_eq!(s.verify(&t.value).unwrap_err().reason, "revoked");
        assert!(s.refresh(&t.value, same_roles).is_err());
        assert_eq!(&*s.verify(&t2.value).unwrap().roles[0], "agent");
        assert_eq!(&*s.revoke(&t2.value).unwrap(), "p");
        assert_eq!(s.verify(&t2.value).unwrap_err().reason, "revoked");
        assert_eq!(s.revoked_count(), 2, "t by its jti, the chain by its family");
        // A forged token is refused.
        assert!(s.revoke(&forge("k1", K2.as_bytes(), &claims(unix_now() + 100))).is_err());
    }

    #[test]
    fn revoking_a_token_revokes_what_was_refreshed_from_it() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        let t1 = s.issue(&Arc::from("p"), &roles(&["agent"]), None, None).unwrap();
        let t2 = s.refresh(&t1.value, same_roles).unwrap();
        let t3 = s.refresh(&t2.value, same_roles).unwrap();
        // Another chain is not touched.
        let other = s.issue(&Arc::from("p"), &roles(&["agent"]), None, None).unwrap();
        s.revoke(&t1.value).unwrap();
        assert_eq!(s.verify(&t3.value).unwrap_err().reason, "revoked");
        assert!(s.refresh(&t3.value, same_roles).is_err());
        assert!(s.verify(&other.value).is_ok());
        // A second service with the same keys sees the chain in the claims.
        let other_service = TokenService::new(&[key("k1", K1)], 60);
        other_service.revoke(&t2.value).unwrap();
        assert_eq!(other_service.verify(&t3.value).unwrap_err().reason, "revoked");
    }

    #[test]
    fn a_revoked_token_that_outlives_token_expiry_stays_revoked() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        // An operator's token may live longer than token_expiry.
        let long = s.issue_for(&Arc::from("svc"), &roles(&[]), 3600, None).unwrap();
        s.revoke(&long.value).unwrap();
        // Long after token_expiry, pruning must not bring it back.
        let later = unix_now() + 600;
        s.update_revoked(later, |_| ());
        assert_eq!(s.verify(&long.value).unwrap_err().reason, "revoked");
    }

    #[test]
    fn a_refresh_takes_the_roles_it_is_given_or_is_refused() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        let t = s.issue(&Arc::from("p"), &roles(&["admin"]), None, Some("fp1")).unwrap();
        let down = s
            .refresh(&t.value, |c| {
                assert_eq!(c.key.as_deref(), Some("fp1"));
                Ok(roles(&["agent"]))
            })
            .unwrap();
        assert_eq!(down.roles, vec!["agent".to_string()]);
        assert_eq!(&*s.verify(&down.value).unwrap().roles[0], "agent");
        let refused = s.refresh(&down.value, |c| {
            assert_eq!(c.key.as_deref(), Some("fp1"), "the key is carried through refreshes");
            Err(Refusal::new("api key removed", "gone"))
        });
        assert_eq!(refused.unwrap_err().reason, "api key removed");
        // A refused refresh leaves the token as it was.
        assert!(s.verify(&down.value).is_ok());
    }

    #[test]
    fn revocations_are_pruned_after_expiry() {
        let s = TokenService::new(&[key("k1", K1)], 60);
        let now = unix_now();
        s.update_revoked(now, |r| r.tokens.insert(Uuid::now_v7(), now - 100));
        assert_eq!(s.revoked_count(), 1);
        // Pruning runs at most once a second.
        s.update_revoked(now + 1, |r| r.tokens.insert(Uuid::now_v7(), now + 100));
        assert_eq!(s.revoked_count(), 1);
    }

    #[test]
    fn max_exp_caps_lifetime() {
        let s = TokenService::new(&[key("k1", K1)], 3600);
        let cap = unix_now() + 30;
        let t = s.issue(&Arc::from("p"), &roles(&[]), Some(cap), None).unwrap();
        assert_eq!(t.expires_at, cap);
        assert_eq!(s.refresh(&t.value, same_roles).unwrap().expires_at, cap);
    }

    #[test]
    fn random_key_without_config() {
        let a = TokenService::new(&[], 60);
        let b = TokenService::new(&[], 60);
        let t = a.issue(&Arc::from("p"), &roles(&[]), None, None).unwrap();
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
