//! Splitting of header values: comma-separated lists and `;name=value` parameters, both aware of
//! quoted strings and `<...>` so that a comma or semicolon inside them does not split.

/// Splits a header value on top-level commas (outside quotes and angle brackets).
pub fn split_list(value: &str) -> Vec<&str> {
    split_top_level(value, b',')
}

/// Splits on `sep` outside quoted strings and `<...>`, trimming each part and dropping empty ones.
pub fn split_top_level(value: &str, sep: u8) -> Vec<&str> {
    TopLevel { value, sep, start: 0 }.collect()
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
            let (mut quoted, mut angle, mut escaped) = (false, false, false);
            let mut end = bytes.len();
            for (i, &b) in bytes.iter().enumerate().skip(self.start) {
                if escaped {
                    escaped = false;
                    continue;
                }
                match b {
                    b'\\' if quoted => escaped = true,
                    b'"' => quoted = !quoted,
                    b'<' if !quoted => angle = true,
                    b'>' if !quoted => angle = false,
                    _ if b == self.sep && !quoted && !angle => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let part = self.value[self.start..end].trim();
            self.start = end + 1;
            if !part.is_empty() {
                return Some(part);
            }
        }
        None
    }
}

/// Parses `key=value, key="quoted value", ...` (digest credentials) into pairs, unquoting values.
pub fn parse_auth_params(s: &str) -> Vec<(String, String)> {
    split_list(s)
        .into_iter()
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), unquote(v.trim())))
        })
        .collect()
}

/// Removes surrounding quotes and backslash escapes.
pub fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
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
            out
        }
        None => v.to_string(),
    }
}

/// Finds a `;name=value` (or bare `;name`) parameter in the part of `s` after the first `;`.
/// Returns `Some("")` for a bare flag.
pub fn find_param<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    TopLevel { value: s, sep: b';', start: 0 }.skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').map_or((p, ""), |(k, v)| (k.trim(), v.trim()));
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
    fn auth_params_are_unquoted() {
        let p = parse_auth_params(r#"username="al\"ice", realm="a,b", nc=00000001, qop=auth"#);
        assert_eq!(p[0], ("username".into(), "al\"ice".into()));
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
