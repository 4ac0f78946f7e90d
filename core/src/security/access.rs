//! Access control: which roles may take which action on which subjects.
//!
//! Each role lists allow patterns per action (`route`, `publish`, `handle`,
//! `admin`) and a `deny` list. A principal is allowed an action on a subject
//! when one of its roles allows it and none of its roles denies it: deny
//! wins, for every action and across roles. `admin` patterns allow every
//! action. Anything not allowed is refused (default deny). Roles a token
//! names that the configuration does not define grant nothing.
//!
//! The check runs on every call, so each role's lists are compiled once into
//! [`RouteTable`] tries (one per action, with the `admin` patterns merged in,
//! and one for `deny`): a decision costs one trie walk per list, independent
//! of how many patterns a role has. A resource that is itself a pattern (a
//! service asking to `handle` `agents.*`) takes the exact but slower path:
//! it is allowed only if an allow pattern covers all of it and no deny
//! pattern overlaps any of it.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Action, Principal};
use crate::config::RoleConfig;
use crate::error::{BridgeError, Result};
use crate::routing::RouteTable;
use crate::routing::subject::{validate_pattern, validate_subject};

const ACTIONS: [Action; 4] = [Action::Route, Action::Publish, Action::Handle, Action::Admin];

fn index(a: Action) -> usize {
    match a {
        Action::Route => 0,
        Action::Publish => 1,
        Action::Handle => 2,
        Action::Admin => 3,
    }
}

#[derive(Debug)]
struct RolePolicy {
    name: Arc<str>,
    deny: RouteTable<()>,
    allow: [RouteTable<()>; 4],
    deny_patterns: Vec<String>,
    allow_patterns: [Vec<String>; 4],
}

/// A refused authorization.
#[derive(Debug)]
pub struct Forbidden {
    /// Fixed phrase for the audit record.
    pub reason: &'static str,
    /// The denying role, if a deny list refused it.
    pub role: Option<Arc<str>>,
    /// What the caller sees (`FORBIDDEN`, or `INVALID_MESSAGE` for a bad resource).
    pub error: BridgeError,
}

/// Role name → policy. foldhash rather than SipHash: this lookup runs per
/// call, and role names come from the configuration and signed tokens.
type RoleMap = HashMap<Arc<str>, RolePolicy, foldhash::fast::RandomState>;

/// Compiled role policies.
#[derive(Debug, Default)]
pub struct AccessControl {
    roles: RoleMap,
}

impl AccessControl {
    /// Compile `security.roles` (patterns already validated by the config).
    pub fn new<'a>(roles: impl IntoIterator<Item = (&'a String, &'a RoleConfig)>) -> Result<Self> {
        let mut out = RoleMap::default();
        for (name, cfg) in roles {
            let name: Arc<str> = Arc::from(name.as_str());
            let mut policy = RolePolicy {
                name: name.clone(),
                deny: RouteTable::new(),
                allow: [RouteTable::new(), RouteTable::new(), RouteTable::new(), RouteTable::new()],
                deny_patterns: cfg.deny.clone(),
                allow_patterns: Default::default(),
            };
            let at =
                |list: &str, e: BridgeError| BridgeError::config(&format!("security.roles.{name}.{list}"), e.message());
            for p in &cfg.deny {
                policy.deny.insert(p, ()).map_err(|e| at("deny", e))?;
            }
            for (action, list) in
                [(Action::Route, &cfg.route), (Action::Publish, &cfg.publish), (Action::Handle, &cfg.handle)]
            {
                for p in list {
                    policy.allow[index(action)].insert(p, ()).map_err(|e| at(action.as_str(), e))?;
                    policy.allow_patterns[index(action)].push(p.clone());
                }
            }
            // Admin implies every action.
            for p in &cfg.admin {
                for a in ACTIONS {
                    policy.allow[index(a)].insert(p, ()).map_err(|e| at("admin", e))?;
                    policy.allow_patterns[index(a)].push(p.clone());
                }
            }
            out.insert(name, policy);
        }
        Ok(AccessControl { roles: out })
    }

    /// Is `role` defined?
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    /// The roles of `roles` this config defines (others grant nothing).
    pub fn defined<'a>(&self, roles: impl Iterator<Item = &'a str>) -> Arc<[Arc<str>]> {
        roles.filter(|r| self.has_role(r)).map(Arc::from).collect()
    }

    /// Allow (naming the granting role) or refuse.
    pub fn check(
        &self,
        principal: &Principal,
        action: Action,
        resource: &str,
    ) -> std::result::Result<Arc<str>, Forbidden> {
        let concrete = match validate_subject(resource) {
            Ok(()) => true,
            Err(e) => {
                if validate_pattern(resource).is_err() {
                    return Err(Forbidden { reason: "invalid resource", role: None, error: e });
                }
                false
            }
        };
        let i = index(action);
        let mut granted: Option<&Arc<str>> = None;
        for role in principal.roles.iter() {
            let Some(p) = self.roles.get(&**role) else { continue };
            let (denied, allowed) = if concrete {
                (p.deny.resolve(resource).is_some(), p.allow[i].resolve(resource).is_some())
            } else {
                (
                    p.deny_patterns.iter().any(|d| overlaps(d, resource)),
                    p.allow_patterns[i].iter().any(|a| covers(a, resource)),
                )
            };
            if denied {
                return Err(Forbidden {
                    reason: "denied by role",
                    role: Some(p.name.clone()),
                    error: BridgeError::forbidden(format!(
                        "principal {:?} may not {} {:?}: role {:?} denies it (security.roles.{}.deny); deny wins over every allow, so remove the pattern there or use a principal without that role",
                        &*principal.name,
                        verb(action),
                        resource,
                        &*p.name,
                        &*p.name
                    )),
                });
            }
            if allowed && granted.is_none() {
                granted = Some(&p.name);
            }
        }
        match granted {
            Some(role) => Ok(role.clone()),
            None => {
                let roles: Vec<&str> = principal.roles.iter().map(|r| &**r).collect();
                let roles =
                    if roles.is_empty() { "no roles".to_string() } else { format!("roles: {}", roles.join(", ")) };
                Err(Forbidden {
                    reason: "no role allows",
                    role: None,
                    error: BridgeError::forbidden(format!(
                        "principal {:?} ({roles}) may not {} {:?}: no role allows it; add a matching pattern to security.roles.<role>.{} (or .admin) for one of its roles",
                        &*principal.name,
                        verb(action),
                        resource,
                        action.as_str()
                    )),
                })
            }
        }
    }
}

fn verb(a: Action) -> &'static str {
    match a {
        Action::Route => "route to",
        Action::Publish => "publish to",
        Action::Handle => "handle",
        Action::Admin => "administer",
    }
}

/// Does pattern `a` match every subject pattern `p` matches?
pub fn covers(a: &str, p: &str) -> bool {
    let mut at = a.split('.');
    let mut pt = p.split('.').peekable();
    loop {
        match (at.next(), pt.peek().copied()) {
            (None, None) => return true,
            // `>` takes one or more tokens: whatever is left of `p` (at least one).
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(x), Some(t)) if x == t && x != "*" && x != ">" => {}
            _ => return false,
        }
        pt.next();
    }
}

/// Is there a subject both patterns match?
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut at = a.split('.');
    let mut bt = b.split('.');
    loop {
        match (at.next(), bt.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::error::ErrorCode;
    use crate::routing::subject::matches;

    fn acl() -> AccessControl {
        let mut roles = BTreeMap::new();
        roles.insert(
            "agent".to_string(),
            RoleConfig {
                route: vec!["services.weather.>".into(), "agents.*".into()],
                publish: vec!["events.>".into()],
                handle: vec!["agents.planner.*".into()],
                deny: vec!["agents.admin".into()],
                ..Default::default()
            },
        );
        roles.insert("admin".to_string(), RoleConfig { admin: vec![">".into()], ..Default::default() });
        roles.insert("locked".to_string(), RoleConfig { deny: vec!["agents.>".into()], ..Default::default() });
        AccessControl::new(&roles).unwrap()
    }

    fn who(roles: &[&str]) -> Principal {
        Principal { name: Arc::from("planner"), roles: roles.iter().map(|r| Arc::from(*r)).collect(), expires_at: 0 }
    }

    #[test]
    fn allow_per_action() {
        let a = acl();
        let p = who(&["agent"]);
        assert_eq!(&*a.check(&p, Action::Route, "services.weather.current").unwrap(), "agent");
        assert!(a.check(&p, Action::Route, "agents.echo").is_ok());
        assert!(a.check(&p, Action::Publish, "events.x.y").is_ok());
        assert!(a.check(&p, Action::Publish, "agents.echo").is_err());
        assert!(a.check(&p, Action::Route, "events.x").is_err());
        assert!(a.check(&p, Action::Admin, "agents.echo").is_err());
    }

    #[test]
    fn deny_wins_and_names_the_fix() {
        let a = acl();
        let e = a.check(&who(&["agent"]), Action::Route, "agents.admin").unwrap_err();
        assert_eq!(e.error.code(), ErrorCode::Forbidden);
        assert_eq!(e.reason, "denied by role");
        let m = e.error.message();
        assert!(m.contains("\"planner\"") && m.contains("route to") && m.contains("agents.admin"), "{m}");
        assert!(m.contains("security.roles.agent.deny"), "{m}");
        // Even an admin role does not beat another role's deny.
        assert!(a.check(&who(&["admin", "locked"]), Action::Route, "agents.echo").is_err());
        assert!(a.check(&who(&["admin"]), Action::Route, "agents.echo").is_ok());
    }

    #[test]
    fn default_deny() {
        let a = acl();
        let e = a.check(&who(&[]), Action::Route, "agents.echo").unwrap_err();
        assert!(e.error.message().contains("no roles"), "{}", e.error.message());
        assert!(e.error.message().contains("security.roles.<role>.route"), "{}", e.error.message());
        assert!(a.check(&who(&["ghost"]), Action::Route, "agents.echo").is_err());
    }

    #[test]
    fn admin_allows_everything() {
        let a = acl();
        for act in ACTIONS {
            assert!(a.check(&who(&["admin"]), act, "anything.at.all").is_ok());
        }
    }

    #[test]
    fn pattern_resources() {
        let a = acl();
        let p = who(&["agent"]);
        assert!(a.check(&p, Action::Handle, "agents.planner.*").is_ok());
        assert!(a.check(&p, Action::Handle, "agents.planner.>").is_err());
        assert!(a.check(&p, Action::Handle, "agents.*").is_err());
        // `agents.*` covers everything under it but overlaps the denied agents.admin.
        assert!(a.check(&p, Action::Route, "agents.*").is_err());
        assert!(a.check(&who(&["admin"]), Action::Handle, "a.>").is_ok());
        let e = a.check(&p, Action::Route, "bad..subject").unwrap_err();
        assert_eq!(e.error.code(), ErrorCode::InvalidMessage);
    }

    #[test]
    fn covers_and_overlaps_agree_with_matches() {
        let pats = ["a", "a.b", "a.*", "a.>", "*", ">", "*.b", "a.b.c", "a.*.c", "*.*", "b.>"];
        let subjects = ["a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "a.b.d", "b.c.d", "z"];
        for x in pats {
            for y in pats {
                let xs: Vec<&str> = subjects.iter().copied().filter(|s| matches(x, s)).collect();
                let ys: Vec<&str> = subjects.iter().copied().filter(|s| matches(y, s)).collect();
                // Over this finite universe, covers implies inclusion and inclusion-free pairs do not cover.
                if covers(x, y) {
                    assert!(ys.iter().all(|s| xs.contains(s)), "{x} covers {y}");
                }
                if ys.iter().any(|s| xs.contains(s)) {
                    assert!(overlaps(x, y), "{x} overlaps {y}");
                }
            }
        }
        assert!(covers(">", "a.*"));
        assert!(covers("a.>", "a.b.>"));
        assert!(!covers("a.*", "a.>"));
        assert!(!covers("a.b", "a.*"));
        assert!(!overlaps("a.b", "a.c"));
        assert!(!overlaps("a.>", "a"));
    }
}
