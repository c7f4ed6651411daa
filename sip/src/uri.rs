//! SIP URIs (RFC 3261 section 19.1) and name-addr values (From, To, Contact).
//!
//! A URI is read by hand, not by rsip 0.4.0: rsip splits host and port at the last colon, so an
//! IPv6 literal (`[2001:db8::1]`) could not pass through it, and its tokenizer, which builds an
//! error string for every alternative it tries, was a tenth of a REGISTER's instructions (a request
//! names five or six URIs). Only the parts the server reads are taken apart (user, host, port);
//! parameters and headers are kept as written, and the URI is written back exactly as it came.

use crate::via::{host_ip, split_host_port};
use memchr::{memchr, memchr2};
use std::net::IpAddr;

/// A parsed `sip:` or `sips:` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri {
    /// The URI as written (trimmed).
    raw: String,
    /// Where the user part is in `raw`, if there is one.
    user: Option<std::ops::Range<usize>>,
    /// Where the host is in `raw` (an IPv6 literal with its brackets).
    host_at: std::ops::Range<usize>,
    /// The host lower-cased, when `raw` does not already have it so (most do: no allocation).
    host_lower: Option<Box<str>>,
    port: Option<u16>,
}

impl SipUri {
    pub fn parse(s: &str) -> Result<SipUri, String> {
        let raw = s.trim_ascii();
        if let Some(b) = raw.bytes().find(|&b| b <= b' ' || b == 0x7f) {
            return Err(format!("bad URI: {:?} is not allowed in a URI", b as char));
        }
        // Found by byte (`memchr`) rather than by `str::find`'s character searchers: a request's
        // URIs are parsed several times over (callgrind: a third less per URI).
        let colon = memchr(b':', raw.as_bytes()).ok_or("bad URI: no scheme")?;
        let (scheme, rest) = (&raw[..colon], &raw[colon + 1..]);
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            return Err("not a sip: or sips: URI".into());
        }
        let rest_at = scheme.len() + 1;
        // Neither parameters nor headers may hold an unescaped '@': the first one ends the userinfo.
        let (user, hostport_at) = match memchr(b'@', rest.as_bytes()) {
            Some(at) => {
                let user_len = memchr(b':', &rest.as_bytes()[..at]).unwrap_or(at);
                if user_len == 0 {
                    return Err("bad URI: empty user part".into());
                }
                (Some(rest_at..rest_at + user_len), rest_at + at + 1)
            }
            None => (None, rest_at),
        };
        let after = &raw[hostport_at..];
        let hostport = &after[..memchr2(b';', b'?', after.as_bytes()).unwrap_or(after.len())];
        let (host, port) = split_host_port(hostport).map_err(|e| format!("bad URI: {e}"))?;
        let host_at = hostport_at..hostport_at + host.len();
        let host_lower = host.bytes().any(|b| b.is_ascii_uppercase()).then(|| host.to_ascii_lowercase().into());
        Ok(SipUri { raw: raw.to_string(), user, host_at, host_lower, port })
    }

    pub fn user(&self) -> Option<&str> {
        self.user.clone().map(|r| &self.raw[r])
    }

    /// Host as written in SIP (IPv6 bracketed), lower-cased.
    pub fn host(&self) -> &str {
        self.host_lower.as_deref().unwrap_or(&self.raw[self.host_at.clone()])
    }

    /// The URI as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The port, if the URI names one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        host_ip(self.host())
    }
}

impl std::fmt::Display for SipUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A name-addr or addr-spec header value: `"Name" <uri>;params` or `uri;params`.
#[derive(Clone, Debug)]
pub struct NameAddr {
    pub uri: SipUri,
    /// Header parameters (after the URI), e.g. `tag`, `expires`, `q`, as written: read by
    /// `param`, which most parsed values never call.
    params: String,
}

impl NameAddr {
    pub fn parse(value: &str) -> Result<NameAddr, String> {
        let value = value.trim_ascii();
        let bytes = value.as_bytes();
        let (uri, params) = match (memchr(b'<', bytes), memchr(b'>', bytes)) {
            (Some(open), Some(close)) if open < close => (&value[open + 1..close], &value[close + 1..]),
            (None, None) => match memchr(b';', bytes) {
                // addr-spec form: parameters after the URI belong to the header (RFC 3261 20).
                Some(i) => (&value[..i], &value[i..]),
                None => (value, ""),
            },
            _ => return Err("unbalanced angle brackets".into()),
        };
        Ok(NameAddr { uri: SipUri::parse(uri)?, params: params.to_string() })
    }

    /// The URI exactly as written, for echoing and as a binding key.
    pub fn raw_uri(&self) -> &str {
        self.uri.as_str()
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        crate::params::param_among(&self.params, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_and_everything_else_come_back_as_written() {
        let u = SipUri::parse("sip:alice@[2001:db8::1]:5070;transport=tcp").unwrap();
        assert_eq!((u.user(), u.host(), u.port()), (Some("alice"), "[2001:db8::1]", Some(5070)));
        assert_eq!(u.ip(), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(u.to_string(), "sip:alice@[2001:db8::1]:5070;transport=tcp");
        let u = SipUri::parse(" SIPS:+1555;phone-context=x:secret@Example.TEST;lr?Subject=hi%20there ").unwrap();
        assert_eq!((u.user(), u.host(), u.port()), (Some("+1555;phone-context=x"), "example.test", None));
        assert_eq!(u.to_string(), "SIPS:+1555;phone-context=x:secret@Example.TEST;lr?Subject=hi%20there");
        let u = SipUri::parse("sip:10.0.0.1:5062").unwrap();
        assert_eq!((u.user(), u.ip(), u.port()), (None, Some("10.0.0.1".parse().unwrap()), Some(5062)));
    }

    #[test]
    fn malformed_uris_are_refused_with_a_reason() {
        for (bad, reason) in [
            ("http://x", "not a sip"),
            ("alice", "no scheme"),
            ("sip:", "bad host"),
            ("sip:@x", "empty user"),
            ("sip:a@", "bad host"),
            ("sip:a@b:99999", "bad port"),
            ("sip:a@b c", "not allowed"),
            ("sip:a@[2001:db8::1", "IPv6"),
            ("sip:a@ex<ample", "bad host"),
        ] {
            let e = SipUri::parse(bad).unwrap_err();
            assert!(e.contains(reason), "{bad}: {e}");
        }
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(r#""Alice" <sip:alice@example.test;transport=tls>;tag=abc;expires=60"#).unwrap();
        assert_eq!((n.uri.user(), n.uri.host()), (Some("alice"), "example.test"));
        assert_eq!(n.param("tag"), Some("abc"));
        assert_eq!(n.param("expires"), Some("60"));
        assert_eq!(n.param("Tag"), Some("abc"), "names match whatever their case");
        assert_eq!(n.raw_uri(), "sip:alice@example.test;transport=tls");
        let bare = NameAddr::parse("sip:bob@Example.Test;tag=1").unwrap();
        assert_eq!(bare.uri.host(), "example.test");
        assert_eq!(bare.param("tag"), Some("1"));
        assert_eq!(bare.raw_uri(), "sip:bob@Example.Test");
        assert!(NameAddr::parse("<sip:a@b").is_err());
        assert!(SipUri::parse("http://x").is_err());
    }
}
