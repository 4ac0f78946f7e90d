//! JSON payloads across the boundary as one string, not one N-API call per value.
//!
//! Walking a JS object through N-API costs a native call per step (type
//! checks, key enumeration, one property read per key, one string copy per
//! key), and building one costs a call per property plus a property-key
//! internalisation each: for a small object that is most of a `route()`.
//! Inside V8 the same work is a few JIT-compiled operations. So a payload
//! that is plain JSON (plain objects, arrays, strings, finite numbers,
//! booleans, null) crosses as text: a JS helper writes it (one call), and
//! [`parse`] reads it; a reply goes back through `JSON.parse` (one call).
//!
//! The helper only accepts what it can write exactly as
//! [`convert::to_json`](crate::convert::to_json) would read it (each
//! property is read once, `undefined` members are left out, arrays keep
//! holes as `null`, the depth limit is the same); anything else (a class
//! instance, a `toJSON`, bytes, a function, a non-finite number, too deep)
//! makes it answer `undefined`, and the caller walks the value as before,
//! which names the problem. The helpers are compiled once per env (main
//! thread or worker) and kept as the env's instance data.

use std::ffi::c_void;
use std::ptr;

use napi::sys;
use serde_json::{Map, Number, Value};

use crate::convert::RawValue;

/// Returns `[encode(value, maxDepth) -> string | undefined, parse(text),
/// resolved(text) -> Promise, install(BridgeManager, routeText)]`.
const SOURCE: &str = r#"(function () {
  'use strict';
  const OP = Object.prototype, AP = Array.prototype, proto = Object.getPrototypeOf, keys = Object.keys;
  const finite = Number.isFinite, str = JSON.stringify, parse = JSON.parse, P = Promise;
  const isArray = Array.isArray, isView = ArrayBuffer.isView;
  // Object keys repeat from call to call: their JSON form is looked up, not
  // rewritten. Bounded: short keys only, and at most 4096 of them.
  const keyText = new Map();
  function key(k) {
    let t = keyText.get(k);
    if (t === undefined) {
      t = str(k) + ':';
      if (keyText.size < 4096 && k.length <= 64) keyText.set(k, t);
    }
    return t;
  }
  function enc(v, depth, max) {
    switch (typeof v) {
      case 'string': return str(v);
      case 'number': return finite(v) ? '' + v : undefined;
      case 'boolean': return v ? 'true' : 'false';
      case 'object': {
        if (v === null) return 'null';
        if (depth >= max) return undefined;
        const p = proto(v);
        // A real array (not an object that borrowed Array.prototype, whose
        // `length` could be anything); the walk handles the odd ones.
        if (p === AP && isArray(v)) {
          let s = '[';
          for (let i = 0; i < v.length; i++) {
            const x = v[i];
            const e = x === undefined ? 'null' : enc(x, depth + 1, max);
            if (e === undefined) return undefined;
            s += i === 0 ? e : ',' + e;
          }
          return s + ']';
        }
        if ((p !== OP && p !== null) || typeof v.toJSON === 'function' || isView(v)) return undefined;
        const ks = keys(v);
        let s = '{', first = true;
        for (let i = 0; i < ks.length; i++) {
          const k = ks[i], x = v[k];
          if (x === undefined) continue;
          const e = enc(x, depth + 1, max);
          if (e === undefined) return undefined;
          s += (first ? '' : ',') + key(k) + e;
          first = false;
        }
        return s + '}';
      }
    }
    return undefined;
  }
  // route(destination, payload) with a plain JSON payload and no options:
  // the payload goes in as text and an immediate JSON reply comes back as
  // text, with no call from native code back into JS and no `this` unwrap
  // (routeText gets the bridge's handle). Everything else (and anything
  // routeText declines by answering undefined) takes route().
  function install(BM, routeText) {
    const proto = BM.prototype, route = proto.route, handleOf = proto.__handle;
    if (typeof route !== 'function' || typeof handleOf !== 'function' || typeof routeText !== 'function') return;
    // Handles are for this closure only.
    try {
      delete proto.__handle;
    } catch (_) {
      // not configurable: it stays, harmless (a handle is only a reference)
    }
    // Each bridge's handle, kept where only this closure can reach it.
    const handles = new WeakMap();
    Object.defineProperty(proto, 'route', {
      value: function route_(a, b, c) {
        if (typeof a === 'string' && c === undefined && typeof b === 'object' && b !== null) {
          // A payload too big for one string (RangeError) or a getter that
          // throws: route() below walks it and reports it as usual.
          let t;
          try {
            t = enc(b, 0, 1000);
          } catch (_) {
            t = undefined;
          }
          if (t !== undefined) {
            let h = handles.get(this);
            if (h === undefined) {
              h = handleOf.call(this);
              handles.set(this, h);
            }
            const r = routeText(h, a, t);
            if (typeof r === 'string') return P.resolve(parse(r));
            if (r !== undefined) return r;
          }
        }
        // The text form was tried (or does not apply): the walk reads each
        // property once more, and only once.
        return route.call(this, a, b, c);
      },
      writable: true,
      configurable: true,
      enumerable: false,
    });
    Object.defineProperty(proto.route, 'name', { value: 'route' });
  }
  return [(v, max) => enc(v, 0, max), parse, (text) => P.resolve(parse(text)), install];
})()"#;

/// The compiled helpers of one env (null references: they could not be built).
struct Helpers {
    encode: sys::napi_ref,
    parse: sys::napi_ref,
    resolved: sys::napi_ref,
    install: sys::napi_ref,
}

unsafe extern "C" fn drop_helpers(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the box leaked in `helpers`; Node calls this once, at
    // env teardown, and frees the references itself.
    drop(unsafe { Box::from_raw(data.cast::<Helpers>()) });
}

fn helpers(env: sys::napi_env) -> Option<&'static Helpers> {
    let mut data = ptr::null_mut();
    // SAFETY: plain query on the current env.
    if unsafe { sys::napi_get_instance_data(env, &mut data) } != sys::Status::napi_ok {
        return None;
    }
    if data.is_null() {
        let h = Box::into_raw(Box::new(compile(env)));
        // SAFETY: the box lives until the env's teardown calls `drop_helpers`.
        let status = unsafe { sys::napi_set_instance_data(env, h.cast(), Some(drop_helpers), ptr::null_mut()) };
        if status != sys::Status::napi_ok {
            // SAFETY: not handed over; reclaim it.
            drop(unsafe { Box::from_raw(h) });
            return None;
        }
        data = h.cast();
    }
    // SAFETY: only this module sets the instance data, always to a `Helpers`,
    // and it lives as long as the env (the caller runs on it).
    let h = unsafe { &*data.cast::<Helpers>() };
    (!h.encode.is_null()).then_some(h)
}

fn compile(env: sys::napi_env) -> Helpers {
    let none = Helpers {
        encode: ptr::null_mut(),
        parse: ptr::null_mut(),
        resolved: ptr::null_mut(),
        install: ptr::null_mut(),
    };
    let (mut src, mut arr) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: creating and running a script on the JS thread of `env`.
    let ran = unsafe {
        sys::napi_create_string_utf8(env, SOURCE.as_ptr().cast(), SOURCE.len() as isize, &mut src)
            == sys::Status::napi_ok
            && sys::napi_run_script(env, src, &mut arr) == sys::Status::napi_ok
    };
    if !ran {
        crate::convert::clear_exception(env);
        return none;
    }
    let mut refs = [ptr::null_mut(); 4];
    for (i, r) in refs.iter_mut().enumerate() {
        let mut f = ptr::null_mut();
        // SAFETY: `arr` is the array the script returned; a strong reference
        // keeps each function for the env's lifetime.
        let ok = unsafe {
            sys::napi_get_element(env, arr, i as u32, &mut f) == sys::Status::napi_ok
                && sys::napi_create_reference(env, f, 1, r) == sys::Status::napi_ok
        };
        if !ok {
            return none;
        }
    }
    Helpers { encode: refs[0], parse: refs[1], resolved: refs[2], install: refs[3] }
}

/// Call helper `r` with `args`; `None` if it threw (the exception is cleared).
fn call(env: sys::napi_env, r: sys::napi_ref, args: &[RawValue]) -> Option<RawValue> {
    let (mut f, mut this, mut out) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    // SAFETY: `r` is a live reference of this env; the arguments are values of it.
    let ok = unsafe {
        sys::napi_get_reference_value(env, r, &mut f) == sys::Status::napi_ok
            && sys::napi_get_undefined(env, &mut this) == sys::Status::napi_ok
            && sys::napi_call_function(env, this, f, args.len(), args.as_ptr(), &mut out) == sys::Status::napi_ok
    };
    if ok {
        Some(out)
    } else {
        crate::convert::clear_exception(env);
        None
    }
}

/// `v` (an object) as JSON, if it is plain JSON within `max_depth`; `None`
/// means "walk it" (it may still be valid, or the walk names what is wrong).
pub(crate) fn encode(env: sys::napi_env, v: RawValue, max_depth: usize) -> Option<Value> {
    let h = helpers(env)?;
    let mut max = ptr::null_mut();
    // SAFETY: plain value creation.
    if unsafe { sys::napi_create_uint32(env, u32::try_from(max_depth).unwrap_or(u32::MAX), &mut max) }
        != sys::Status::napi_ok
    {
        return None;
    }
    let text = call(env, h.encode, &[v, max])?;
    let text = crate::convert::get_string(env, text).ok()?;
    parse(&text, max_depth)
}

/// At module load: give `BridgeManager.prototype.route` its text fast path
/// (see `install` in the helper source). Without it `route()` still works,
/// only slower, so a failure here is not an error.
pub(crate) fn install_route(env: sys::napi_env, exports: RawValue) {
    let Some(h) = helpers(env) else { return };
    let (mut class, mut key) = (ptr::null_mut(), ptr::null_mut());
    const NAME: &str = "BridgeManager";
    // SAFETY: `exports` is the module's exports object on this env.
    let ok = unsafe {
        sys::napi_create_string_utf8(env, NAME.as_ptr().cast(), NAME.len() as isize, &mut key) == sys::Status::napi_ok
            && sys::napi_get_property(env, exports, key, &mut class) == sys::Status::napi_ok
    };
    let mut route_text = ptr::null_mut();
    const FN: &str = "routeText";
    // SAFETY: a plain native function of this env.
    let made = unsafe {
        sys::napi_create_function(
            env,
            FN.as_ptr().cast(),
            FN.len() as isize,
            Some(crate::route_text_cb),
            ptr::null_mut(),
            &mut route_text,
        ) == sys::Status::napi_ok
    };
    if ok && made {
        let _ = call(env, h.install, &[class, route_text]);
    }
}

/// A JS value from JSON text, through `JSON.parse`.
pub(crate) fn to_js(env: sys::napi_env, v: &Value) -> Option<RawValue> {
    let h = helpers(env)?;
    let text = crate::convert::create_string(env, &serde_json::to_string(v).ok()?).ok()?;
    call(env, h.parse, &[text])
}

/// A Promise already resolved with `v`, in one call.
pub(crate) fn resolved(env: sys::napi_env, v: &Value) -> Option<RawValue> {
    let h = helpers(env)?;
    let text = crate::convert::create_string(env, &serde_json::to_string(v).ok()?).ok()?;
    call(env, h.resolved, &[text])
}

/// Parse JSON text as the walk would have read the value it came from:
/// numbers that are integers below 2^53 in magnitude become integers, every
/// other number the nearest `f64` (the standard library's exact parse), and
/// an unpaired surrogate escape becomes U+FFFD, as N-API's UTF-8 copy does.
/// `None` on anything unexpected, including nesting deeper than `max_depth`.
pub(crate) fn parse(text: &str, max_depth: usize) -> Option<Value> {
    let mut p = Parser { s: text.as_bytes(), i: 0, max_depth };
    let v = p.value(0)?;
    (p.i == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Option<Value> {
        if self.s.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Some(v)
        } else {
            None
        }
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        match self.peek()? {
            b'{' => {
                if depth >= self.max_depth {
                    return None;
                }
                self.i += 1;
                let mut map = Map::new();
                if self.eat(b'}') {
                    return Some(Value::Object(map));
                }
                loop {
                    let k = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    let v = self.value(depth + 1)?;
                    map.insert(k, v);
                    if self.eat(b'}') {
                        return Some(Value::Object(map));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                if depth >= self.max_depth {
                    return None;
                }
                self.i += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Value::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' => self.string().map(Value::String),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            _ => self.number(),
        }
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        // Short plain integers (the common case) need no float parse.
        let digits = text.strip_prefix('-').unwrap_or(text);
        if !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()) {
            return text.parse::<i64>().ok().map(|n| Value::Number(Number::from(n)));
        }
        let n: f64 = text.parse().ok()?;
        if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
            Some(Value::Number(Number::from(n as i64)))
        } else {
            Number::from_f64(n).map(Value::Number)
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.i..self.i + 4)?;
        let n = u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
        self.i += 4;
        Some(n)
    }

    fn string(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote or escape in one go.
            let start = self.i;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' {
                    break;
                }
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.s[start..self.i]).ok()?);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(out);
                }
                _ => {
                    self.i += 1;
                    let c = match self.peek()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            self.i += 1;
                            let c = self.unicode_escape()?;
                            out.push(c);
                            continue;
                        }
                        _ => return None,
                    };
                    self.i += 1;
                    out.push(c);
                }
            }
        }
    }

    /// After `\u`: one code point, joining a surrogate pair; an unpaired
    /// surrogate is U+FFFD.
    fn unicode_escape(&mut self) -> Option<char> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) && self.s.get(self.i..self.i + 2) == Some(b"\\u") {
            let save = self.i;
            self.i += 2;
            let lo = self.hex4()?;
            if (0xDC00..0xE000).contains(&lo) {
                return char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00));
            }
            self.i = save;
        }
        Some(char::from_u32(hi).unwrap_or('\u{FFFD}'))
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use serde_json::json;

    #[test]
    fn parses_what_the_encoder_writes() {
        let v =
            parse(r#"{"n":1,"f":0.1,"big":1e+21,"neg":-5,"s":"a\"b\\c\n\u00e9","a":[true,false,null,[]],"o":{}}"#, 8);
        assert_eq!(
            v,
            Some(
                json!({"n": 1, "f": 0.1, "big": 1e21, "neg": -5, "s": "a\"b\\c\né", "a": [true, false, null, []], "o": {}})
            )
        );
    }

    #[test]
    fn numbers_follow_the_walk() {
        assert_eq!(parse("9007199254740991", 1).and_then(|v| v.as_i64()), Some(9_007_199_254_740_991));
        assert!(parse("9007199254740992", 1).is_some_and(|v| v.is_f64()));
        assert_eq!(parse("2.5e3", 1).and_then(|v| v.as_i64()), Some(2500));
        assert_eq!(parse("0.30000000000000004", 1).and_then(|v| v.as_f64()), Some(0.1 + 0.2));
    }

    #[test]
    fn surrogates_pair_or_become_replacement_characters() {
        assert_eq!(parse(r#""\ud83d\ude00""#, 1), Some(json!("😀")));
        assert_eq!(parse(r#""\ud83dx""#, 1), Some(json!("\u{FFFD}x")));
        assert_eq!(parse(r#""\ude00""#, 1), Some(json!("\u{FFFD}")));
    }

    #[test]
    fn refuses_malformed_or_too_deep_text() {
        for bad in ["", "{", "[1,]", "{\"a\"}", "tru", "\"abc", "1 2", "\"\\x\""] {
            assert_eq!(parse(bad, 8), None, "{bad:?}");
        }
        assert_eq!(parse("[[1]]", 1), None);
        assert!(parse("[[1]]", 2).is_some());
    }
}
