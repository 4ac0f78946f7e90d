//! Security through the public bridge API: API keys, bridge tokens, OIDC,
//! access control, message signing and the audit file, with security on.
//!
//! The RSA key pair under `tests/fixtures/` is test-only (made once with
//! `openssl genrsa 2048`); it stands in for an OIDC issuer's signing key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dreamos_bridge::security::apikeys::hash_key;
use dreamos_bridge::security::signing::signature_header;
use dreamos_bridge::{
    Action, BridgeError, BridgeManager, CallOptions, Credentials, ErrorCode, Message, Payload, handler_fn,
};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const K1: &str = "k1-bridge-signing-secret-0123456789abcdef";
const K2: &str = "k2-bridge-signing-secret-fedcba9876543210";
const PLANNER_KEY: &str = "dk_planner_live_7f3a9c51e2";
const OPS_KEY: &str = "dk_ops_live_a81b2c3d4e";
const LOCKED_KEY: &str = "dk_locked_live_99e8d7c6";
const MSG_SECRET: &str = "msg-signing-secret-00112233445566778899";
const SECRETS: [&str; 6] = [K1, K2, PLANNER_KEY, OPS_KEY, LOCKED_KEY, MSG_SECRET];

const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/test_rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/test_rsa_public.pem");
const OIDC_KID: &str = "idp-rsa-1";
const ISSUER: &str = "https://idp.test";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The issuer's JWKS: the fixture's public modulus and exponent (base64url).
fn jwks() -> serde_json::Value {
    let enc = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(OIDC_KID.into());
    let v = serde_json::to_value(&jwk).unwrap();
    assert_eq!(v["kty"], "RSA");
    assert!(URL_SAFE_NO_PAD.decode(v["n"].as_str().unwrap()).unwrap().len() >= 256);
    assert_eq!(v["e"], "AQAB");
    json!({ "keys": [v] })
}

struct Fixture {
    bridge: BridgeManager,
    audit: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.audit);
    }
}

/// `keys` lists the bridge-token keys, first signs.
fn config(keys: &[(&str, &str)], audit: &Path) -> String {
    let keys: String = keys.iter().map(|(id, s)| format!("    - id: {id}\n      secret: {s}\n")).collect();
    format!(
        r#"
security:
  auth_type: token
  token_expiry: 600
  signing_keys:
{keys}  api_keys:
    - principal: planner
      sha256: {planner}
      roles: [agent]
    - principal: ops
      sha256: {ops}
      roles: [admin]
    - principal: quarantined
      sha256: {locked}
      roles: [admin, locked]
  roles:
    agent:
      route: ["agents.*", "services.weather.>"]
      publish: ["events.>"]
      deny: ["agents.admin"]
    admin:
      admin: [">"]
    locked:
      deny: ["agents.>"]
  oidc:
    issuer: {ISSUER}
    audience: [bridge, other-aud]
    jwks: {jwks}
    algorithms: [RS256, HS256]
    roles_claim: groups
    principal_claim: email
  message_signing:
    keys:
      - id: m1
        secret: {MSG_SECRET}
    window: 60
  audit_log: {audit}
"#,
        planner = hash_key(PLANNER_KEY),
        ops = hash_key(OPS_KEY),
        locked = hash_key(LOCKED_KEY),
        jwks = jwks(),
        audit = audit.display(),
    )
}

async fn start(keys: &[(&str, &str)]) -> Fixture {
    start_edited(keys, |c| c).await
}

/// Like [`start`], with the config text changed by `edit` first.
async fn start_edited(keys: &[(&str, &str)], edit: impl FnOnce(String) -> String) -> Fixture {
    let audit = std::env::temp_dir().join(format!("dreamos-sec-{}-{}.jsonl", std::process::id(), uuid::Uuid::now_v7()));
    let bridge = BridgeManager::from_yaml(&edit(config(keys, &audit))).unwrap();
    bridge.initialize().await.unwrap();
    for pattern in ["agents.echo", "agents.admin", "secret.vault", "events.>"] {
        bridge.register_route(pattern, handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
    }
    Fixture { bridge, audit }
}

async fn fixture() -> Fixture {
    start(&[("k1", K1)]).await
}

fn login(b: &BridgeManager, key: &str) -> String {
    b.authenticate(&Credentials::ApiKey(key.into())).unwrap().value
}

async fn call(b: &BridgeManager, token: Option<&str>, dest: &str) -> Result<Payload, BridgeError> {
    let opts = CallOptions { token: token.map(str::to_string), timeout: Some(Duration::from_secs(5)) };
    b.route(Message::new(dest, json!({"n": 1})), opts).await
}

/// Assert the code, and that no secret leaks into the message.
fn expect(e: BridgeError, code: ErrorCode, needle: &str) -> String {
    assert_eq!(e.code(), code, "{e:?}");
    let m = e.message().to_string();
    assert!(m.contains(needle), "expected {needle:?} in {m:?}");
    for s in SECRETS {
        assert!(!m.contains(s), "secret in error message: {m}");
    }
    m
}

fn hs256(kid: Option<&str>, secret: &[u8], claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn bridge_claims(exp: u64) -> serde_json::Value {
    json!({"sub": "planner", "roles": ["agent"], "iat": now(), "exp": exp,
           "jti": uuid::Uuid::now_v7().to_string(), "iss": "dreamos-bridge"})
}

fn rs256(kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap()).unwrap()
}

fn oidc_claims() -> serde_json::Value {
    json!({"sub": "user-42", "email": "alice@example.com", "iss": ISSUER, "aud": "bridge",
           "iat": now(), "exp": now() + 300, "groups": ["agent", "unknown-group"]})
}

fn audit_lines(f: &Fixture) -> (String, Vec<serde_json::Value>) {
    assert!(f.bridge.security().flush_audit(Duration::from_secs(5)));
    let text = std::fs::read_to_string(&f.audit).unwrap();
    let lines = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (text, lines)
}

#[tokio::test]
async fn api_key_then_route_with_the_token() {
    let f = fixture().await;
    let t = f.bridge.authenticate(&Credentials::ApiKey(PLANNER_KEY.into())).unwrap();
    assert_eq!(t.principal, "planner");
    assert_eq!(t.roles, vec!["agent"]);
    let reply = call(&f.bridge, Some(&t.value), "agents.echo").await.unwrap();
    assert_eq!(reply.as_json(), Some(&json!({"n": 1})));
    let p = f.bridge.verify_token(&t.value).unwrap();
    assert_eq!(&*p.name, "planner");
    assert!(f.bridge.authorize(&t.value, Action::Publish, "events.x").unwrap());
    assert!(!f.bridge.authorize(&t.value, Action::Publish, "agents.echo").unwrap());
    // Credentials from a binding's dict.
    let c = Credentials::from_json(&json!({"api_key": PLANNER_KEY})).unwrap();
    assert!(!format!("{c:?}").contains(PLANNER_KEY));
    assert!(f.bridge.authenticate(&c).is_ok());
}

#[tokio::test]
async fn unknown_api_key_is_unauthenticated() {
    let f = fixture().await;
    let e = f.bridge.authenticate(&Credentials::ApiKey("dk_guess_123456".into())).unwrap_err();
    let m = expect(e, ErrorCode::Unauthenticated, "unknown API key");
    assert!(!m.contains("dk_guess_123456"));
}

#[tokio::test]
async fn missing_and_malformed_tokens() {
    let f = fixture().await;
    expect(call(&f.bridge, None, "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "no token");
    for bad in ["", "not-a-jwt", "a.b.c", "a.b.c.d", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        expect(call(&f.bridge, Some(bad), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "malformed");
    }
    // The bridge still works.
    let t = login(&f.bridge, PLANNER_KEY);
    assert!(call(&f.bridge, Some(&t), "agents.echo").await.is_ok());
}

#[tokio::test]
async fn expired_wrong_key_unknown_kid_and_alg_none() {
    let f = fixture().await;
    let expired = hs256(Some("k1"), K1.as_bytes(), &bridge_claims(now() - 120));
    expect(call(&f.bridge, Some(&expired), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "expired");
    let wrong = hs256(Some("k1"), b"some-other-secret-of-enough-length-000", &bridge_claims(now() + 60));
    expect(call(&f.bridge, Some(&wrong), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "signature");
    let unknown = hs256(Some("k7"), K1.as_bytes(), &bridge_claims(now() + 60));
    expect(call(&f.bridge, Some(&unknown), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "\"k7\"");
    let no_kid = hs256(None, K1.as_bytes(), &bridge_claims(now() + 60));
    expect(call(&f.bridge, Some(&no_kid), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "kid");
    // alg: none, with a valid-looking body and an empty signature (and with a stray one).
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let c = URL_SAFE_NO_PAD.encode(bridge_claims(now() + 60).to_string());
    for t in [format!("{h}.{c}."), format!("{h}.{c}.AAAA")] {
        expect(call(&f.bridge, Some(&t), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "\"none\"");
    }
    // A correctly signed token for comparison: the forged ones failed for their flaw only.
    let good = hs256(Some("k1"), K1.as_bytes(), &bridge_claims(now() + 60));
    assert!(call(&f.bridge, Some(&good), "agents.echo").await.is_ok());
}

#[tokio::test]
async fn hs_rs_algorithm_confusion_is_refused() {
    let f = fixture().await;
    // As a bridge token: HS256 MACed with the RSA public key (PEM text and the
    // raw modulus), claiming a bridge key id; and an RS256 token.
    let claims = bridge_claims(now() + 60);
    let modulus = URL_SAFE_NO_PAD.decode(jwks()["keys"][0]["n"].as_str().unwrap()).unwrap();
    for secret in [RSA_PUBLIC, &modulus[..]] {
        let t = hs256(Some("k1"), secret, &claims);
        expect(call(&f.bridge, Some(&t), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "signature");
    }
    let rs = rs256(Some("k1"), &claims);
    expect(call(&f.bridge, Some(&rs), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "RS256");
    // As an OIDC token: HS256 is in the configured allow-list, but the kid
    // names an RSA key, so the public key is never used as an HMAC secret.
    for secret in [RSA_PUBLIC, &modulus[..]] {
        let t = hs256(Some(OIDC_KID), secret, &oidc_claims());
        let e = f.bridge.authenticate(&Credentials::Jwt(t)).unwrap_err();
        expect(e, ErrorCode::Unauthenticated, "does not fit");
    }
}

#[tokio::test]
async fn revoke_and_refresh() {
    let f = fixture().await;
    let t = login(&f.bridge, PLANNER_KEY);
    assert!(call(&f.bridge, Some(&t), "agents.echo").await.is_ok());
    let fresh = f.bridge.refresh(&t).unwrap();
    assert_eq!(fresh.principal, "planner");
    expect(call(&f.bridge, Some(&t), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "revoked");
    assert!(call(&f.bridge, Some(&fresh.value), "agents.echo").await.is_ok());
    f.bridge.revoke(&fresh.value).unwrap();
    expect(
        call(&f.bridge, Some(&fresh.value), "agents.echo").await.unwrap_err(),
        ErrorCode::Unauthenticated,
        "revoked",
    );
    expect(f.bridge.refresh(&fresh.value).unwrap_err(), ErrorCode::Unauthenticated, "revoked");
    // Other tokens are untouched.
    let other = login(&f.bridge, PLANNER_KEY);
    assert!(call(&f.bridge, Some(&other), "agents.echo").await.is_ok());
}

#[tokio::test]
async fn revoking_a_token_revokes_the_tokens_refreshed_from_it() {
    let f = fixture().await;
    let leaked = login(&f.bridge, PLANNER_KEY);
    let second = f.bridge.refresh(&leaked).unwrap();
    let third = f.bridge.refresh(&second.value).unwrap();
    f.bridge.revoke(&leaked).unwrap();
    for t in [&second.value, &third.value] {
        expect(call(&f.bridge, Some(t), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "revoked");
    }
    expect(f.bridge.refresh(&third.value).unwrap_err(), ErrorCode::Unauthenticated, "revoked");
    assert!(call(&f.bridge, Some(&login(&f.bridge, PLANNER_KEY)), "agents.echo").await.is_ok());
}

#[tokio::test]
async fn a_refresh_takes_the_api_keys_roles_as_configured_now() {
    let ops_entry = format!("    - principal: ops\n      sha256: {}\n      roles: [admin]\n", hash_key(OPS_KEY));
    let before = fixture().await;
    let admin_token = login(&before.bridge, OPS_KEY);
    assert!(call(&before.bridge, Some(&admin_token), "secret.vault").await.is_ok());
    // The same signing keys, the key downgraded to agent: a refresh gives agent.
    let downgraded = start_edited(&[("k1", K1)], |c| {
        let edited = c.replace(&ops_entry, &ops_entry.replace("[admin]", "[agent]"));
        assert_ne!(edited, c);
        edited
    })
    .await;
    let refreshed = downgraded.bridge.refresh(&admin_token).unwrap();
    assert_eq!(refreshed.roles, vec!["agent"]);
    expect(
        call(&downgraded.bridge, Some(&refreshed.value), "secret.vault").await.unwrap_err(),
        ErrorCode::Forbidden,
        "ops",
    );
    // The key removed: no refresh at all, and the chain goes no further.
    let removed = start_edited(&[("k1", K1)], |c| c.replace(&ops_entry, "")).await;
    expect(removed.bridge.refresh(&refreshed.value).unwrap_err(), ErrorCode::Unauthenticated, "no longer configured");
    // Tokens not from an API key keep their roles that are still defined.
    let minted = before.bridge.security().issue_token("tool", &["agent".into()], Duration::from_secs(60)).unwrap();
    assert_eq!(removed.bridge.refresh(&minted.value).unwrap().roles, vec!["agent"]);
}

#[tokio::test]
async fn tokens_and_call_options_hide_the_token_in_debug_output() {
    let f = fixture().await;
    let t = f.bridge.authenticate(&Credentials::ApiKey(PLANNER_KEY.into())).unwrap();
    let shown = format!("{t:?} {:?}", CallOptions::with_token(t.value.clone()));
    assert!(!shown.contains(&t.value) && shown.contains("planner"), "{shown}");
}

#[test]
fn one_api_key_listed_twice_is_a_config_error() {
    let audit = std::env::temp_dir().join("dreamos-sec-unused.jsonl");
    let twice = config(&[("k1", K1)], &audit).replace(&hash_key(LOCKED_KEY), &hash_key(OPS_KEY).to_uppercase());
    let e = BridgeManager::from_yaml(&twice).unwrap_err();
    expect(e, ErrorCode::Config, "security.api_keys[2].sha256");
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid() {
    let old = fixture().await;
    let t = login(&old.bridge, PLANNER_KEY);
    // A new key goes first; the old one stays to verify.
    let rotated = start(&[("k2", K2), ("k1", K1)]).await;
    assert!(call(&rotated.bridge, Some(&t), "agents.echo").await.is_ok());
    let t2 = login(&rotated.bridge, PLANNER_KEY);
    assert_eq!(jsonwebtoken::decode_header(&t2).unwrap().kid.as_deref(), Some("k2"));
    assert!(call(&rotated.bridge, Some(&t2), "agents.echo").await.is_ok());
    // Once k1 is retired, its tokens stop working.
    let retired = start(&[("k2", K2)]).await;
    expect(call(&retired.bridge, Some(&t), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "\"k1\"");
    assert!(call(&retired.bridge, Some(&t2), "agents.echo").await.is_ok());
}

#[tokio::test]
async fn forbidden_destination_and_deny_wins() {
    let f = fixture().await;
    let planner = login(&f.bridge, PLANNER_KEY);
    let m = expect(call(&f.bridge, Some(&planner), "secret.vault").await.unwrap_err(), ErrorCode::Forbidden, "planner");
    assert!(m.contains("route to") && m.contains("secret.vault") && m.contains("security.roles.<role>.route"), "{m}");
    // agents.* allows agents.admin, but the deny list wins.
    let m = expect(call(&f.bridge, Some(&planner), "agents.admin").await.unwrap_err(), ErrorCode::Forbidden, "deny");
    assert!(m.contains("security.roles.agent.deny"), "{m}");
    // Publish is a different action: events.> is allowed, agents.echo is not.
    let opts = CallOptions::with_token(planner.clone());
    assert!(f.bridge.publish(Message::new("events.x", json!(1)), opts.clone()).await.is_ok());
    let e = f.bridge.publish(Message::new("agents.echo", json!(1)), opts).await.unwrap_err();
    expect(e, ErrorCode::Forbidden, "publish to");
    // Admin may do anything...
    let ops = login(&f.bridge, OPS_KEY);
    assert!(call(&f.bridge, Some(&ops), "secret.vault").await.is_ok());
    assert!(call(&f.bridge, Some(&ops), "agents.admin").await.is_ok());
    // ...except where another of the principal's roles denies it.
    let q = login(&f.bridge, LOCKED_KEY);
    assert!(call(&f.bridge, Some(&q), "secret.vault").await.is_ok());
    let m = expect(call(&f.bridge, Some(&q), "agents.echo").await.unwrap_err(), ErrorCode::Forbidden, "quarantined");
    assert!(m.contains("security.roles.locked.deny"), "{m}");
}

#[tokio::test]
async fn replayed_signed_message_is_refused() {
    let f = fixture().await;
    let sec = f.bridge.security();
    let msg = Message::new("agents.echo", json!({"b": [1, 2], "a": "x"}));
    let sig = sec.sign_message("m1", &msg).unwrap();
    assert!(!sig.contains(MSG_SECRET));
    sec.verify_message(&msg, &sig).unwrap();
    expect(sec.verify_message(&msg, &sig).unwrap_err(), ErrorCode::Unauthenticated, "replayed");
    // A client computing the header itself (same canonical form) is accepted,
    // and key order in the payload does not matter.
    let reordered = Message { payload: json!({"a": "x", "b": [1, 2]}).into(), ..msg.clone() };
    let own = signature_header("m1", MSG_SECRET.as_bytes(), &reordered, now(), "client-nonce-0001");
    sec.verify_message(&msg, &own).unwrap();
    // Altered payload, stale timestamp, wrong secret.
    let altered = Message { payload: json!({"a": "y", "b": [1, 2]}).into(), ..msg.clone() };
    let s2 = sec.sign_message("m1", &msg).unwrap();
    expect(sec.verify_message(&altered, &s2).unwrap_err(), ErrorCode::Unauthenticated, "does not verify");
    let stale = signature_header("m1", MSG_SECRET.as_bytes(), &msg, now() - 600, "client-nonce-0002");
    expect(sec.verify_message(&msg, &stale).unwrap_err(), ErrorCode::Unauthenticated, "timestamp");
    let forged = signature_header("m1", K1.as_bytes(), &msg, now(), "client-nonce-0003");
    expect(sec.verify_message(&msg, &forged).unwrap_err(), ErrorCode::Unauthenticated, "does not verify");
}

#[tokio::test]
async fn oidc_login() {
    let f = fixture().await;
    let t = f.bridge.authenticate(&Credentials::Jwt(rs256(Some(OIDC_KID), &oidc_claims()))).unwrap();
    assert_eq!(t.principal, "alice@example.com");
    // Only roles the bridge defines are kept.
    assert_eq!(t.roles, vec!["agent"]);
    // The bridge token never outlives the external one.
    assert!(t.expires_at <= now() + 300);
    assert!(call(&f.bridge, Some(&t.value), "agents.echo").await.is_ok());
    expect(call(&f.bridge, Some(&t.value), "secret.vault").await.unwrap_err(), ErrorCode::Forbidden, "alice");
    // From a binding's dict; roles as a space-separated string; second audience.
    let mut c = oidc_claims();
    c["groups"] = json!("admin agent");
    c["aud"] = json!(["other-aud"]);
    let creds = Credentials::from_json(&json!({"token": rs256(Some(OIDC_KID), &c)})).unwrap();
    assert_eq!(f.bridge.authenticate(&creds).unwrap().roles, vec!["admin", "agent"]);
}

#[tokio::test]
async fn oidc_refusals() {
    let f = fixture().await;
    let auth = |claims: &serde_json::Value, kid: Option<&str>| {
        f.bridge.authenticate(&Credentials::Jwt(rs256(kid, claims))).unwrap_err()
    };
    let mut c = oidc_claims();
    c["iss"] = json!("https://evil.test");
    expect(auth(&c, Some(OIDC_KID)), ErrorCode::Unauthenticated, "issuer");
    let mut c = oidc_claims();
    c["aud"] = json!("someone-else");
    expect(auth(&c, Some(OIDC_KID)), ErrorCode::Unauthenticated, "audience");
    expect(auth(&oidc_claims(), Some("rotated-away")), ErrorCode::Unauthenticated, "rotated-away");
    let mut c = oidc_claims();
    c["exp"] = json!(now() - 3600);
    expect(auth(&c, Some(OIDC_KID)), ErrorCode::Unauthenticated, "expired");
    let mut c = oidc_claims();
    c.as_object_mut().unwrap().remove("email");
    expect(auth(&c, Some(OIDC_KID)), ErrorCode::Unauthenticated, "email");
    // Expired, but within the issuer's clock-skew leeway: no dead token.
    let mut c = oidc_claims();
    c["exp"] = json!(now() - 10);
    expect(auth(&c, Some(OIDC_KID)), ErrorCode::Unauthenticated, "expired");
    // A subject that names an API-key principal does not pass for it.
    let mut c = oidc_claims();
    c["email"] = json!("planner");
    expect(auth(&c, Some(OIDC_KID)), ErrorCode::Unauthenticated, "API-key principal");
    // A bridge token is not an OIDC token.
    let bridge_token = login(&f.bridge, PLANNER_KEY);
    expect(
        f.bridge.authenticate(&Credentials::Jwt(bridge_token)).unwrap_err(),
        ErrorCode::Unauthenticated,
        "not in the configured JWKS",
    );
}

#[tokio::test]
async fn audit_file_records_decisions_without_secrets() {
    let f = fixture().await;
    let planner = login(&f.bridge, PLANNER_KEY);
    let _ = f.bridge.authenticate(&Credentials::ApiKey("dk_wrong_key_000".into()));
    call(&f.bridge, Some(&planner), "agents.echo").await.unwrap();
    let _ = call(&f.bridge, Some(&planner), "agents.admin").await;
    let _ = call(&f.bridge, Some("garbage"), "agents.echo").await;
    let _ = call(&f.bridge, None, "agents.echo").await;
    let msg = Message::new("agents.echo", json!(null));
    let sig = f.bridge.security().sign_message("m1", &msg).unwrap();
    f.bridge.security().verify_message(&msg, &sig).unwrap();
    let _ = f.bridge.security().verify_message(&msg, &sig);
    f.bridge.revoke(&planner).unwrap();

    let (text, lines) = audit_lines(&f);
    for s in SECRETS.iter().chain([&"dk_wrong_key_000", &planner.as_str()]) {
        assert!(!text.contains(s), "secret in the audit log: {s}");
    }
    let find = |action: &str, decision: &str| {
        lines.iter().filter(|l| l["action"] == action && l["decision"] == decision).cloned().collect::<Vec<_>>()
    };
    let ok = find("authenticate", "allow");
    assert_eq!(ok.len(), 1, "{text}");
    assert_eq!(ok[0]["principal"], "planner");
    assert_eq!(ok[0]["resource"], "api_key");
    let bad = find("authenticate", "deny");
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["principal"].is_null());
    let routed = find("route", "allow");
    assert_eq!(routed.len(), 1);
    assert_eq!(routed[0]["resource"], "agents.echo");
    assert_eq!(routed[0]["role"], "agent");
    let denied = find("route", "deny");
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0]["resource"], "agents.admin");
    assert_eq!(denied[0]["reason"], "denied by role");
    assert_eq!(denied[1]["resource"], "agents.echo");
    assert_eq!(denied[1]["reason"], "missing token");
    assert!(denied[1]["principal"].is_null());
    assert_eq!(find("verify", "deny")[0]["reason"], "malformed");
    assert_eq!(find("verify_message", "allow").len(), 1);
    assert_eq!(find("verify_message", "deny")[0]["reason"], "replayed");
    assert_eq!(find("revoke", "allow")[0]["principal"], "planner");
    assert!(lines.iter().all(|l| l["time_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000)));
    assert_eq!(f.bridge.security().audit_dropped(), 0);
}

#[tokio::test]
async fn security_off_needs_no_token() {
    let b = BridgeManager::from_yaml("security:\n  auth_type: none\n").unwrap();
    b.initialize().await.unwrap();
    b.register_route("agents.echo", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
    assert!(!b.security().enabled());
    assert!(call(&b, None, "agents.echo").await.is_ok());
    expect(b.authenticate(&Credentials::ApiKey(PLANNER_KEY.into())).unwrap_err(), ErrorCode::Unauthenticated, "off");
}

#[tokio::test]
async fn random_key_without_signing_keys() {
    let yaml = format!(
        "security:\n  api_keys:\n    - principal: p\n      sha256: {}\n      roles: [r]\n  roles:\n    r:\n      route: [\"agents.>\"]\n",
        hash_key(PLANNER_KEY)
    );
    let a = BridgeManager::from_yaml(&yaml).unwrap();
    let b = BridgeManager::from_yaml(&yaml).unwrap();
    for x in [&a, &b] {
        x.initialize().await.unwrap();
        x.register_route("agents.echo", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
    }
    let t = login(&a, PLANNER_KEY);
    assert!(call(&a, Some(&t), "agents.echo").await.is_ok());
    // Tokens hold for the issuing process only.
    expect(call(&b, Some(&t), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "signature");
}

#[tokio::test]
async fn concurrent_verification_shares_one_principal() {
    let f = Arc::new(fixture().await);
    let t = login(&f.bridge, PLANNER_KEY);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (f, t) = (f.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                call(&f.bridge, Some(&t), "agents.echo").await.unwrap();
            }
            f.bridge.verify_token(&t).unwrap()
        }));
    }
    let mut principals = Vec::new();
    for task in tasks {
        principals.push(task.await.unwrap());
    }
    assert!(principals.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
}

#[tokio::test]
async fn operator_minted_tokens() {
    let f = fixture().await;
    let sec = f.bridge.security();
    let t = sec.issue_token("batch-job", &["agent".to_string()], Duration::from_secs(120)).unwrap();
    assert_eq!((t.principal.as_str(), t.roles.as_slice()), ("batch-job", &["agent".to_string()][..]));
    assert!(t.expires_at >= now() + 119 && t.expires_at <= now() + 121, "{}", t.expires_at);
    // Another bridge with the same keys accepts it; roles are enforced.
    let other = start(&[("k1", K1)]).await;
    assert!(call(&other.bridge, Some(&t.value), "agents.echo").await.is_ok());
    expect(call(&other.bridge, Some(&t.value), "secret.vault").await.unwrap_err(), ErrorCode::Forbidden, "");
    // A bridge with other keys refuses it.
    let stranger = start(&[("k2", K2)]).await;
    expect(call(&stranger.bridge, Some(&t.value), "agents.echo").await.unwrap_err(), ErrorCode::Unauthenticated, "");
    // Unknown roles, empty principals and zero lifetimes are refused.
    let e = sec.issue_token("p", &["root".to_string()], Duration::from_secs(60)).unwrap_err();
    expect(e, ErrorCode::InvalidMessage, "security.roles");
    expect(sec.issue_token(" ", &[], Duration::from_secs(60)).unwrap_err(), ErrorCode::InvalidMessage, "principal");
    expect(sec.issue_token("p", &[], Duration::ZERO).unwrap_err(), ErrorCode::InvalidMessage, "lifetime");
    // Without configured signing keys there is nothing a server would accept.
    let no_keys = BridgeManager::from_yaml("security:\n  auth_type: token\n").unwrap();
    expect(
        no_keys.security().issue_token("p", &[], Duration::from_secs(60)).unwrap_err(),
        ErrorCode::Config,
        "signing_keys",
    );
    // Security off: no tokens.
    let off = BridgeManager::new_default();
    expect(
        off.security().issue_token("p", &[], Duration::from_secs(60)).unwrap_err(),
        ErrorCode::Unauthenticated,
        "off",
    );
}
