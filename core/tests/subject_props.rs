//! Property tests: the route table's trie agrees with a direct reference
//! matcher, including which pattern wins when several match.

use dreamos_bridge::routing::RouteTable;
use dreamos_bridge::routing::subject::{matches, validate_pattern};
use proptest::prelude::*;

/// Specificity per token: literal 2, `*` 1, `>` 0; compared left to right.
fn rank(pattern: &str) -> Vec<u8> {
    pattern
        .split('.')
        .map(|t| match t {
            ">" => 0,
            "*" => 1,
            _ => 2,
        })
        .collect()
}

/// The reference: scan every pattern, keep the most specific match.
fn reference<'a>(patterns: &'a [String], subject: &str) -> Option<&'a String> {
    patterns.iter().filter(|p| matches(p, subject)).max_by(|a, b| rank(a).cmp(&rank(b)))
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string())]
}

fn pattern_token() -> impl Strategy<Value = String> {
    prop_oneof![4 => token(), 2 => Just("*".to_string())]
}

fn pattern() -> impl Strategy<Value = String> {
    (prop::collection::vec(pattern_token(), 1..5), any::<bool>()).prop_map(|(mut toks, tail)| {
        if tail {
            toks.push(">".to_string());
        }
        toks.join(".")
    })
}

fn subject() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..6).prop_map(|t| t.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn trie_resolution_matches_reference(
        patterns in prop::collection::btree_set(pattern(), 0..24),
        subjects in prop::collection::vec(subject(), 1..16),
    ) {
        let patterns: Vec<String> = patterns.into_iter().collect();
        let mut table = RouteTable::new();
        for p in &patterns {
            prop_assert!(validate_pattern(p).is_ok());
            table.insert(p, p.clone()).unwrap();
        }
        for s in &subjects {
            prop_assert_eq!(table.resolve(s), reference(&patterns, s), "subject {}", s);
        }
    }

    #[test]
    fn removal_leaves_the_rest_resolving_like_the_reference(
        patterns in prop::collection::btree_set(pattern(), 1..24),
        remove_mask in prop::collection::vec(any::<bool>(), 24),
        subjects in prop::collection::vec(subject(), 1..16),
    ) {
        let patterns: Vec<String> = patterns.into_iter().collect();
        let mut table = RouteTable::new();
        for p in &patterns {
            table.insert(p, p.clone()).unwrap();
        }
        let mut kept = Vec::new();
        for (p, remove) in patterns.iter().zip(remove_mask) {
            if remove {
                let removed = table.remove(p);
                prop_assert_eq!(removed.as_ref(), Some(p));
            } else {
                kept.push(p.clone());
            }
        }
        prop_assert_eq!(table.len(), kept.len());
        for s in &subjects {
            prop_assert_eq!(table.resolve(s), reference(&kept, s), "subject {}", s);
        }
    }
}
