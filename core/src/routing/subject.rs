//! Subject grammar: dot-separated tokens as in NATS.
//!
//! A *subject* names one destination (`services.weather.current`); a
//! *pattern* may also use `*` (exactly one token) and `>` (one or more
//! trailing tokens). The same grammar is used by routes, by access-control
//! rules and by subscriptions, so it lives in one place.

use crate::error::{BridgeError, Result};

/// True for the bytes allowed inside a token: `[A-Za-z0-9_-]`.
#[inline]
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The most tokens a subject or pattern may have. The route table walks a
/// pattern one level per token (recursively), so an unbounded pattern (a
/// WebSocket subscription of 100,000 tokens, say) would overflow a thread's
/// stack; 256 tokens is far beyond any real subject (the default
/// `limits.max_subject_bytes` of 256 allows at most 128).
pub const MAX_TOKENS: usize = 256;

fn too_many_tokens(what: &str, tokens: usize) -> BridgeError {
    BridgeError::invalid(format!("{what} has {tokens} tokens; at most {MAX_TOKENS} are allowed"))
}

/// Check a concrete destination subject (no wildcards).
pub fn validate_subject(subject: &str) -> Result<()> {
    if subject.is_empty() {
        return Err(BridgeError::invalid(
            "destination is empty: use dot-separated tokens like `services.weather.current`",
        ));
    }
    // One pass over the bytes (this runs for every message); the messages
    // below are built only on failure.
    let mut token_len = 0usize;
    let mut dots = 0usize;
    for &b in subject.as_bytes() {
        if b == b'.' {
            if token_len == 0 {
                return Err(empty_token(subject));
            }
            token_len = 0;
            dots += 1;
        } else if is_token_byte(b) {
            token_len += 1;
        } else {
            return Err(bad_token(subject));
        }
    }
    if token_len == 0 {
        return Err(empty_token(subject));
    }
    if dots >= MAX_TOKENS {
        return Err(too_many_tokens("the destination", dots + 1));
    }
    Ok(())
}

fn empty_token(subject: &str) -> BridgeError {
    BridgeError::invalid(format!("destination {subject:?} has an empty token: tokens are separated by single dots"))
}

fn bad_token(subject: &str) -> BridgeError {
    let token = subject.split('.').find(|t| !t.bytes().all(is_token_byte)).unwrap_or(subject);
    BridgeError::invalid(format!(
        "destination {subject:?}: token {token:?} may only use letters, digits, `_` and `-` (wildcards are for patterns)"
    ))
}

/// Check a pattern: tokens, `*` for one token, `>` only as the last token.
pub fn validate_pattern(pattern: &str) -> Result<()> {
    if pattern.is_empty() {
        return Err(BridgeError::invalid(
            "pattern is empty: use tokens, `*` and a trailing `>`, e.g. `services.weather.>`",
        ));
    }
    let count = pattern.bytes().filter(|&b| b == b'.').count() + 1;
    if count > MAX_TOKENS {
        return Err(too_many_tokens("the pattern", count));
    }
    let mut tokens = pattern.split('.').peekable();
    while let Some(token) = tokens.next() {
        let last = tokens.peek().is_none();
        match token {
            "*" => {}
            ">" if last => {}
            ">" => {
                return Err(BridgeError::invalid(format!("pattern {pattern:?}: `>` must be the last token")));
            }
            "" => {
                return Err(BridgeError::invalid(format!(
                    "pattern {pattern:?} has an empty token: tokens are separated by single dots"
                )));
            }
            t if t.bytes().all(is_token_byte) => {}
            t => {
                return Err(BridgeError::invalid(format!(
                    "pattern {pattern:?}: token {t:?} may only use letters, digits, `_`, `-`, or be `*` or `>`"
                )));
            }
        }
    }
    Ok(())
}

/// Does `pattern` match the concrete `subject`? Both are assumed valid.
///
/// This is the direct definition; the route table's trie must agree with it
/// (a property test checks that).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The literal tokens a pattern starts with, e.g. `services.weather` for
/// `services.weather.>`. HTTP routes map the rest of the subject to a path.
pub fn literal_prefix_len(pattern: &str) -> usize {
    pattern.split('.').take_while(|t| *t != "*" && *t != ">").count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        for ok in ["a", "a.b", "services.weather-2.current_now", "A9"] {
            validate_subject(ok).unwrap();
        }
        for bad in ["", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "a/b", "ü"] {
            assert!(validate_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns() {
        for ok in ["a", "*", ">", "a.*.c", "a.>", "*.*.>"] {
            validate_pattern(ok).unwrap();
        }
        for bad in ["", "a.>.b", "a..b", "a.**", "a.b>", ">.a", "a.*x"] {
            assert!(validate_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_counts_are_bounded() {
        let tokens = |n: usize| vec!["a"; n].join(".");
        validate_subject(&tokens(MAX_TOKENS)).unwrap();
        validate_pattern(&format!("{}.>", tokens(MAX_TOKENS - 1))).unwrap();
        let e = validate_subject(&tokens(MAX_TOKENS + 1)).unwrap_err();
        assert!(e.message().contains("257 tokens; at most 256"), "{}", e.message());
        assert!(validate_pattern(&tokens(100_000)).is_err());
    }

    #[test]
    fn matching() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "x"));
        assert!(matches("*.b.>", "a.b.c.d"));
    }

    #[test]
    fn prefix() {
        assert_eq!(literal_prefix_len("services.weather.>"), 2);
        assert_eq!(literal_prefix_len("a.*.c"), 1);
        assert_eq!(literal_prefix_len("a.b"), 2);
    }
}
