//! External OAuth2/OIDC tokens: verified against the issuer's JWKS, then
//! exchanged for a bridge token.
//!
//! The checks, in order: the header's `alg` is in `security.oidc.algorithms`
//! (`none` never is: it is not even an algorithm the JWT library knows); the
//! `kid` names a key of the JWKS (a token without `kid` is accepted only when
//! the JWKS has exactly one key); the key's type fits the algorithm's family
//! and its own `alg`, if it has one, equals the token's (so an HS256 token
//! can never be checked against an RSA or EC public key used as an HMAC
//! secret); then the signature, `exp` (and `nbf` when present), `iss` and
//! `aud`. The principal comes from `principal_claim`, the roles from
//! `roles_claim` (a list of strings or one space-separated string).

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

use super::tokens::{Refusal, header_alg_kid};
use crate::config::OidcConfig;
use crate::error::{BridgeError, Result};

/// Clock skew tolerated on the external token's `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

#[derive(Clone)]
struct OidcKey {
    family: AlgorithmFamily,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// What a verified external token says.
#[derive(Debug, Clone)]
pub struct OidcIdentity {
    /// From `principal_claim`.
    pub principal: Arc<str>,
    /// From `roles_claim`.
    pub roles: Vec<String>,
    /// The external token's expiry, Unix seconds (`exp` is required, so
    /// `None` only if it was not a plain number).
    pub expires_at: Option<u64>,
}

/// The configured issuer and its keys.
pub struct OidcVerifier {
    issuer: String,
    algorithms: Vec<Algorithm>,
    keys_by_kid: HashMap<String, OidcKey>,
    /// The only key, when the JWKS has exactly one (for tokens without `kid`).
    single: Option<OidcKey>,
    roles_claim: String,
    principal_claim: String,
    validation: Validation,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("algorithms", &self.algorithms)
            .field("kids", &self.keys_by_kid.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl OidcVerifier {
    /// Load the JWKS (inline or from `jwks_file`) and prepare the checks.
    pub fn new(cfg: &OidcConfig) -> Result<Self> {
        let (doc, path) = match (&cfg.jwks, &cfg.jwks_file) {
            (Some(v), _) => (v.clone(), "security.oidc.jwks"),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    BridgeError::config("security.oidc.jwks_file", format!("cannot read {} ({e})", file.display()))
                })?;
                let v = serde_json::from_str(&text).map_err(|e| {
                    BridgeError::config("security.oidc.jwks_file", format!("{} is not JSON ({e})", file.display()))
                })?;
                (v, "security.oidc.jwks_file")
            }
            (None, None) => {
                return Err(BridgeError::config("security.oidc", "give the issuer's keys as `jwks` or `jwks_file`"));
            }
        };
        let set: JwkSet = serde_json::from_value(doc).map_err(|e| {
            BridgeError::config(path, format!("not a JWKS document (expected {{\"keys\": [...]}}): {e}"))
        })?;
        let mut keys_by_kid = HashMap::new();
        let mut usable = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
                AlgorithmParameters::OctetKey(_) => AlgorithmFamily::Hmac,
                // Unknown key types: not for signatures.
                _ => continue,
            };
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match Algorithm::try_from(a) {
                    Ok(a) => Some(a),
                    // e.g. RSA-OAEP: an encryption key, never a verifier.
                    Err(_) => continue,
                },
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| BridgeError::config(&format!("{path}.keys[{i}]"), format!("unusable key: {e}")))?;
            let k = OidcKey { family, alg, key };
            if let Some(kid) = &jwk.common.key_id
                && keys_by_kid.insert(kid.clone(), k.clone()).is_some()
            {
                return Err(BridgeError::config(&format!("{path}.keys[{i}].kid"), format!("duplicate key id {kid:?}")));
            }
            usable.push(k);
        }
        if usable.is_empty() {
            return Err(BridgeError::config(path, "the JWKS has no signature-verification key"));
        }
        // A token without `kid` is only unambiguous when there is one key.
        let single = if usable.len() == 1 { usable.pop() } else { None };
        let mut algorithms = Vec::new();
        for a in &cfg.algorithms {
            let alg = a.parse::<Algorithm>().map_err(|_| {
                BridgeError::config("security.oidc.algorithms", format!("{a:?} is not an accepted algorithm"))
            })?;
            algorithms.push(alg);
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_audience(&cfg.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Ok(OidcVerifier {
            issuer: cfg.issuer.clone(),
            algorithms,
            keys_by_kid,
            single,
            roles_claim: cfg.roles_claim.clone(),
            principal_claim: cfg.principal_claim.clone(),
            validation,
        })
    }

    /// Verify an external JWT.
    pub fn verify(&self, token: &str) -> std::result::Result<OidcIdentity, Refusal> {
        let (alg_name, kid) = header_alg_kid(token).map_err(|_| {
            refusal("malformed", "the OIDC token is malformed: pass the issuer's JWT (header.claims.signature)")
        })?;
        let alg = alg_name.parse::<Algorithm>().ok().filter(|a| self.algorithms.contains(a)).ok_or_else(|| {
            let shown: String = alg_name.chars().take(16).collect();
            refusal(
                "algorithm not allowed",
                format!("OIDC token algorithm {shown:?} is not in security.oidc.algorithms {:?}", self.algorithms),
            )
        })?;
        let key = match &kid {
            Some(kid) => self.keys_by_kid.get(kid).ok_or_else(|| {
                let shown: String = kid.chars().take(64).collect();
                refusal(
                    "unknown kid",
                    format!("OIDC token key id {shown:?} is not in the configured JWKS: update security.oidc.jwks"),
                )
            })?,
            None => self.single.as_ref().ok_or_else(|| {
                refusal("missing kid", "the OIDC token has no `kid` header and the JWKS has several keys")
            })?,
        };
        // The confusion guard: the algorithm must belong to the key's family.
        if alg.family() != key.family || key.alg.is_some_and(|a| a != alg) {
            return Err(refusal(
                "algorithm does not fit key",
                format!("OIDC token algorithm {alg:?} does not fit the JWKS key it names"),
            ));
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => {
                        refusal("expired", "the OIDC token has expired: get a fresh one from the issuer")
                    }
                    K::ImmatureSignature => refusal("not yet valid", "the OIDC token is not valid yet (nbf)"),
                    K::InvalidSignature => refusal("bad signature", "the OIDC token signature does not verify"),
                    K::InvalidIssuer => refusal(
                        "wrong issuer",
                        format!("the OIDC token's issuer is not {:?} (security.oidc.issuer)", self.issuer),
                    ),
                    K::InvalidAudience => {
                        refusal("wrong audience", "the OIDC token's audience is not one of security.oidc.audience")
                    }
                    K::MissingRequiredClaim(c) => {
                        refusal("missing claim", format!("the OIDC token lacks the required `{c}` claim"))
                    }
                    K::InvalidAlgorithm | K::InvalidKeyFormat => {
                        refusal("algorithm does not fit key", "OIDC token algorithm does not fit the JWKS key")
                    }
                    _ => refusal("malformed", "the OIDC token is malformed"),
                }
            })?;
        let claims = data.claims;
        let principal = match claims.get(&self.principal_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Arc::from(s.as_str()),
            _ => {
                return Err(refusal(
                    "missing principal",
                    format!(
                        "the OIDC token has no string `{}` claim (security.oidc.principal_claim)",
                        self.principal_claim
                    ),
                ));
            }
        };
        let roles = match claims.get(&self.roles_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            Some(_) => {
                return Err(refusal(
                    "bad roles claim",
                    format!(
                        "the OIDC token's `{}` claim must be a list of strings or a space-separated string",
                        self.roles_claim
                    ),
                ));
            }
        };
        // NumericDate may have a fraction; whole seconds are enough here.
        let expires_at = claims.get("exp").and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)));
        Ok(OidcIdentity { principal, roles, expires_at })
    }
}

fn refusal(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { reason, error: BridgeError::unauthenticated(message) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::tokens::unix_now;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"an-oct-key-for-hs256-tests-only-0123456789";

    fn cfg(jwks: serde_json::Value, algs: &[&str]) -> OidcConfig {
        OidcConfig {
            issuer: "https://idp.test".into(),
            audience: vec!["bridge".into()],
            jwks: Some(jwks),
            jwks_file: None,
            algorithms: algs.iter().map(|a| a.to_string()).collect(),
            roles_claim: "roles".into(),
            principal_claim: "sub".into(),
        }
    }

    fn oct_jwks(kid: &str) -> serde_json::Value {
        use base64::Engine;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        serde_json::json!({"keys": [{"kty": "oct", "kid": kid, "alg": "HS256", "k": k}]})
    }

    fn token(kid: Option<&str>, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({"sub": "alice", "iss": "https://idp.test", "aud": "bridge", "exp": unix_now() + 60, "roles": "agent viewer"})
    }

    #[test]
    fn symmetric_issuer_works_when_allowed() {
        let v = OidcVerifier::new(&cfg(oct_jwks("h1"), &["HS256"])).unwrap();
        let id = v.verify(&token(Some("h1"), good_claims())).unwrap();
        assert_eq!(&*id.principal, "alice");
        assert_eq!(id.roles, vec!["agent", "viewer"]);
        assert!(id.expires_at.is_some_and(|e| e > unix_now()));
        // A fractional exp still caps the bridge token sensibly.
        let mut c = good_claims();
        c["exp"] = serde_json::json!(unix_now() as f64 + 60.5);
        assert!(v.verify(&token(Some("h1"), c)).unwrap().expires_at.is_some_and(|e| e > unix_now()));
        // Without a kid the single key is used.
        assert!(v.verify(&token(None, good_claims())).is_ok());
    }

    #[test]
    fn checks_fail_with_reasons() {
        let v = OidcVerifier::new(&cfg(oct_jwks("h1"), &["HS256"])).unwrap();
        let mut c = good_claims();
        c["iss"] = "https://evil.test".into();
        assert_eq!(v.verify(&token(Some("h1"), c)).unwrap_err().reason, "wrong issuer");
        let mut c = good_claims();
        c["aud"] = "other".into();
        assert_eq!(v.verify(&token(Some("h1"), c)).unwrap_err().reason, "wrong audience");
        let mut c = good_claims();
        c["exp"] = (unix_now() - 600).into();
        assert_eq!(v.verify(&token(Some("h1"), c)).unwrap_err().reason, "expired");
        assert_eq!(v.verify(&token(Some("nope"), good_claims())).unwrap_err().reason, "unknown kid");
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(v.verify(&token(Some("h1"), c)).unwrap_err().reason, "missing claim");
        let mut c = good_claims();
        c["roles"] = 5.into();
        assert_eq!(v.verify(&token(Some("h1"), c)).unwrap_err().reason, "bad roles claim");
        assert_eq!(v.verify("garbage").unwrap_err().reason, "malformed");
    }

    #[test]
    fn algorithm_must_be_allowed() {
        // The default allow-list is RS256 only: an HS256 token is refused
        // before any key is looked at.
        let v = OidcVerifier::new(&cfg(oct_jwks("h1"), &["RS256"])).unwrap();
        assert_eq!(v.verify(&token(Some("h1"), good_claims())).unwrap_err().reason, "algorithm not allowed");
    }

    #[test]
    fn bad_jwks_is_a_config_error() {
        let e = OidcVerifier::new(&cfg(serde_json::json!({"nokeys": 1}), &["RS256"])).unwrap_err();
        assert!(e.message().starts_with("security.oidc.jwks"), "{}", e.message());
        let e = OidcVerifier::new(&cfg(serde_json::json!({"keys": []}), &["RS256"])).unwrap_err();
        assert!(e.message().contains("no signature-verification key"), "{}", e.message());
    }
}
