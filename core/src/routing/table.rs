//! The route table: a token trie from subject patterns to values.
//!
//! Resolution walks one trie level per subject token, so its cost depends on
//! the subject's length, not on how many routes are registered. When several
//! patterns match, the most specific wins: at each token position a literal
//! beats `*`, which beats `>`, compared left to right. Trying the children in
//! that order and returning the first complete match gives exactly that
//! order, so resolution is deterministic.

use std::collections::HashMap;

use crate::error::Result;
use crate::routing::subject::validate_pattern;

/// A map from validated patterns to values, resolved by subject.
#[derive(Debug)]
pub struct RouteTable<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    /// foldhash rather than SipHash: one lookup per token of every routed
    /// subject; the keys are the configured patterns' tokens.
    literals: HashMap<Box<str>, Node<T>, foldhash::fast::RandomState>,
    star: Option<Box<Node<T>>>,
    /// The value of the pattern that ends in `>` here.
    tail: Option<T>,
    /// The value of the pattern that ends exactly here.
    value: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { literals: HashMap::default(), star: None, tail: None, value: None }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.star.is_none() && self.tail.is_none() && self.value.is_none()
    }
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable { root: Node::default(), len: 0 }
    }
}

impl<T> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of patterns in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no pattern is registered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert `value` under `pattern`, returning the value it replaces.
    /// The pattern is validated first (`INVALID_MESSAGE` if bad).
    pub fn insert(&mut self, pattern: &str, value: T) -> Result<Option<T>> {
        validate_pattern(pattern)?;
        let mut node = &mut self.root;
        let mut tokens = pattern.split('.').peekable();
        let slot = loop {
            let Some(token) = tokens.next() else { break &mut node.value };
            match token {
                ">" => break &mut node.tail,
                "*" => node = node.star.get_or_insert_with(Box::default),
                lit => node = node.literals.entry(lit.into()).or_default(),
            }
        };
        let old = slot.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        Ok(old)
    }

    /// The value stored under exactly this pattern.
    pub fn get(&self, pattern: &str) -> Option<&T> {
        let mut node = &self.root;
        for token in pattern.split('.') {
            match token {
                ">" => return node.tail.as_ref(),
                "*" => node = node.star.as_deref()?,
                lit => node = node.literals.get(lit)?,
            }
        }
        node.value.as_ref()
    }

    /// Remove the pattern, returning its value. Empty branches are pruned so
    /// that register/unregister cycles do not grow the table.
    pub fn remove(&mut self, pattern: &str) -> Option<T> {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = remove_rec(&mut self.root, &tokens);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The value of the most specific pattern matching `subject`.
    pub fn resolve(&self, subject: &str) -> Option<&T> {
        let mut tokens = [""; 32];
        let mut n = 0;
        for t in subject.split('.') {
            if n == tokens.len() {
                // Deeper than any sensible subject: fall back to the slow path.
                let all: Vec<&str> = subject.split('.').collect();
                return resolve_rec(&self.root, &all);
            }
            tokens[n] = t;
            n += 1;
        }
        resolve_rec(&self.root, &tokens[..n])
    }

    /// All stored values, in no particular order.
    pub fn values(&self) -> Vec<&T> {
        let mut out = Vec::with_capacity(self.len);
        collect(&self.root, &mut out);
        out
    }
}

fn remove_rec<T>(node: &mut Node<T>, tokens: &[&str]) -> Option<T> {
    let Some((first, rest)) = tokens.split_first() else { return node.value.take() };
    match *first {
        ">" if rest.is_empty() => node.tail.take(),
        ">" => None,
        "*" => {
            let child = node.star.as_deref_mut()?;
            let removed = remove_rec(child, rest);
            if child.is_empty() {
                node.star = None;
            }
            removed
        }
        lit => {
            let child = node.literals.get_mut(lit)?;
            let removed = remove_rec(child, rest);
            if child.is_empty() {
                node.literals.remove(lit);
            }
            removed
        }
    }
}

fn resolve_rec<'a, T>(node: &'a Node<T>, tokens: &[&str]) -> Option<&'a T> {
    let Some((first, rest)) = tokens.split_first() else { return node.value.as_ref() };
    if let Some(child) = node.literals.get(*first)
        && let Some(v) = resolve_rec(child, rest)
    {
        return Some(v);
    }
    if let Some(child) = node.star.as_deref()
        && let Some(v) = resolve_rec(child, rest)
    {
        return Some(v);
    }
    node.tail.as_ref()
}

fn collect<'a, T>(node: &'a Node<T>, out: &mut Vec<&'a T>) {
    out.extend(node.value.as_ref());
    out.extend(node.tail.as_ref());
    if let Some(star) = node.star.as_deref() {
        collect(star, out);
    }
    for child in node.literals.values() {
        collect(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(patterns: &[&str]) -> RouteTable<String> {
        let mut t = RouteTable::new();
        for p in patterns {
            t.insert(p, p.to_string()).unwrap();
        }
        t
    }

    #[test]
    fn most_specific_wins() {
        let t = table(&["a.>", "a.*", "a.b", "*.b", ">", "a.*.c", "a.b.>"]);
        assert_eq!(t.resolve("a.b").unwrap(), "a.b");
        assert_eq!(t.resolve("a.x").unwrap(), "a.*");
        assert_eq!(t.resolve("z.b").unwrap(), "*.b");
        assert_eq!(t.resolve("a.b.c").unwrap(), "a.b.>");
        assert_eq!(t.resolve("a.x.c").unwrap(), "a.*.c");
        assert_eq!(t.resolve("a.x.d").unwrap(), "a.>");
        assert_eq!(t.resolve("q").unwrap(), ">");
    }

    #[test]
    fn backtracks_from_a_literal_dead_end() {
        let t = table(&["a.b.c", "a.*.d"]);
        assert_eq!(t.resolve("a.b.d").unwrap(), "a.*.d");
        assert!(t.resolve("a.b.e").is_none());
    }

    #[test]
    fn insert_replace_remove() {
        let mut t = table(&["a.b", "a.>"]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.insert("a.b", "new".into()).unwrap().unwrap(), "a.b");
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove("a.b").unwrap(), "new");
        assert_eq!(t.resolve("a.b").unwrap(), "a.>");
        assert!(t.remove("a.b").is_none());
        assert_eq!(t.remove("a.>").unwrap(), "a.>");
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn rejects_bad_patterns() {
        let mut t = RouteTable::new();
        assert!(t.insert("a.>.b", 1).is_err());
        assert!(t.insert("", 1).is_err());
        assert!(t.is_empty());
    }

    #[test]
    fn deep_subjects_take_the_slow_path() {
        let deep: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        let subject = deep.join(".");
        let t = table(&["t0.>"]);
        assert_eq!(t.resolve(&subject).unwrap(), "t0.>");
    }
}
