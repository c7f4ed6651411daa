//! Splitting of header values: comma-separated lists and `;name=value` parameters, both aware of
//! quoted strings and `<...>` so that a comma or semicolon inside them does not split.

use std::borrow::Cow;

/// Splits a header value on top-level commas (outside quotes and angle brackets).
pub fn split_list(value: &str) -> Vec<&str> {
    split_top_level(value, b',')
}

/// Splits on `sep` outside quoted strings and `<...>`, trimming each part and dropping empty ones.
pub fn split_top_level(value: &str, sep: u8) -> Vec<&str> {
    top_level(value, sep).collect()
}

/// The parts of `split_top_level`, one at a time (nothing allocated).
pub fn top_level(value: &str, sep: u8) -> impl Iterator<Item = &str> {
    TopLevel { value, sep, start: 0 }
}

/// The parts of `split_top_level`, found one at a time: a parameter lookup stops at its match
/// and allocates nothing (lookups run several times per request).
struct TopLevel<'a> {
    value: &'a str,
    sep: u8,
    /// Where the next part starts; past the end when done.
    start: usize,
}

impl<'a> Iterator for TopLevel<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.value.as_bytes();
        while self.start <= bytes.len() {
            let end = self.part_end(bytes);
            let part = self.value[self.start..end].trim_ascii();
            self.start = end + 1;
            if !part.is_empty() {
                return Some(part);
            }
        }
        None
    }
}

impl TopLevel<'_> {
    /// Where the part starting at `start` ends: the next separator outside quotes and `<...>`, or
    /// the end. Jumps between the bytes that matter in each state (`memchr`): values are scanned
    /// several times per request.
    fn part_end(&self, bytes: &[u8]) -> usize {
        use memchr::{memchr2, memchr3};
        let (mut quoted, mut angle) = (false, false);
        let mut at = self.start;
        while at < bytes.len() {
            let rest = &bytes[at..];
            if quoted {
                // Only an escape or the closing quote matter inside a quoted string.
                let Some(i) = memchr2(b'\\', b'"', rest) else { break };
                at += i;
                if bytes[at] == b'\\' {
                    at += 1;
                } else {
                    quoted = false;
                }
            } else if angle {
                let Some(i) = memchr2(b'>', b'"', rest) else { break };
                at += i;
                if bytes[at] == b'"' {
                    quoted = true;
                } else {
                    angle = false;
                }
            } else {
                let Some(i) = memchr3(self.sep, b'"', b'<', rest) else { break };
                at += i;
                match bytes[at] {
                    b'"' => quoted = true,
                    b'<' => angle = true,
                    _ => return at,
                }
            }
            at += 1;
        }
        bytes.len()
    }
}

/// The first part of a list (trimmed, as `split_top_level` gives it) and everything after its
/// separator, for callers that change only the first part.
pub fn split_first(value: &str, sep: u8) -> Option<(&str, &str)> {
    let mut parts = TopLevel { value, sep, start: 0 };
    let first = parts.next()?;
    Some((first, value.get(parts.start..).unwrap_or("")))
}

/// Parses `key=value, key="quoted value", ...` (digest credentials) into pairs, keys lower-cased
/// and values unquoted; both borrow from `s` unless they had to change (credentials are checked on
/// every authenticated request).
pub fn parse_auth_params(s: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    // Sized for the usual credentials (about ten parameters): grown from empty it moved three times.
    let mut pairs = Vec::with_capacity(12);
    for item in top_level(s, b',') {
        let Some(eq) = memchr::memchr(b'=', item.as_bytes()) else { continue };
        let k = item[..eq].trim_ascii();
        let k = if k.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(k.to_ascii_lowercase())
        } else {
            Cow::Borrowed(k)
        };
        pairs.push((k, unquote(item[eq + 1..].trim_ascii())));
    }
    pairs
}

/// Removes surrounding quotes and backslash escapes.
pub fn unquote(v: &str) -> Cow<'_, str> {
    let inner = match v.as_bytes() {
        [b'"', .., b'"'] => &v[1..v.len() - 1],
        _ => return Cow::Borrowed(v),
    };
    if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Finds a `;name=value` (or bare `;name`) parameter in the part of `s` after the first `;`.
/// Returns `Some("")` for a bare flag.
pub fn find_param<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    named(top_level(s, b';').skip(1), name)
}

/// Finds a parameter in `;`-separated parameters with nothing before them (a name-addr's).
pub fn param_among<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    named(top_level(params, b';'), name)
}

/// The value of the first part named `name` (any case), `""` for a bare flag.
fn named<'a>(mut parts: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    parts.find_map(|p| {
        let (k, v) = p.split_once('=').map_or((p, ""), |(k, v)| (k.trim_ascii(), v.trim_ascii()));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_outside_quotes_and_brackets() {
        let v = r#""Doe, John" <sip:j@x;a=b,c>;q=0.5, <sip:k@y>"#;
        assert_eq!(split_list(v), vec![r#""Doe, John" <sip:j@x;a=b,c>;q=0.5"#, "<sip:k@y>"]);
    }

    #[test]
    fn quotes_escapes_and_brackets_hide_separators() {
        let v = r#"a="x;\";y";b=<sip:c;d>;"e<";f"#;
        assert_eq!(split_top_level(v, b';'), vec![r#"a="x;\";y""#, "b=<sip:c;d>", r#""e<""#, "f"]);
        // Unterminated quote or bracket: the rest is one part.
        assert_eq!(split_top_level(r#"a;"b;c"#, b';'), vec!["a", r#""b;c"#]);
        assert_eq!(split_top_level("a;<b;c", b';'), vec!["a", "<b;c"]);
        assert_eq!(split_top_level(r#"a;"b\"#, b';'), vec!["a", r#""b\"#]);
        assert_eq!(split_first("x , y, z", b','), Some(("x", " y, z")));
        assert_eq!(split_first(" x ", b','), Some(("x", "")));
        assert_eq!(split_first(" , ", b','), None);
    }

    #[test]
    fn auth_params_are_unquoted() {
        let p = parse_auth_params(r#"username="al\"ice", realm="a,b", nc=00000001, qop=auth"#);
        assert_eq!(p[0], ("username".into(), "al\"ice".into()));
        assert!(matches!(p[1].1, Cow::Borrowed(_)), "nothing to unescape: borrowed");
        let upper = parse_auth_params("Realm=x");
        assert_eq!(upper[0], ("realm".into(), "x".into()));
        assert_eq!(p[1], ("realm".into(), "a,b".into()));
        assert_eq!(p[2], ("nc".into(), "00000001".into()));
    }

    #[test]
    fn params_are_found_case_insensitively() {
        let v = "<sip:a@b;lr>;Expires=30;tag=x;rport";
        assert_eq!(find_param(v, "expires"), Some("30"));
        assert_eq!(find_param(v, "rport"), Some(""));
        assert_eq!(find_param(v, "lr"), None);
    }
}
