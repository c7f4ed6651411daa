//! SIP URIs and name-addr values (From, To, Contact) through rsip, with IPv6 literals made to fit.
//!
//! rsip 0.4.0 splits host and port at the last colon and prints IPv6 hosts without brackets, so
//! `[2001:db8::1]` cannot pass through it. Before rsip sees a value, bracketed literals are
//! replaced by a reserved domain name that encodes the address (`2001-db8--1.ipv6-literal.invalid`);
//! every string read back is decoded again. The `.invalid` TLD (RFC 2606) can never be a real host.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr};

const SUFFIX: &str = ".ipv6-literal.invalid";

fn encode(s: &str) -> Cow<'_, str> {
    if !s.contains('[') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + SUFFIX.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close) if after[..close].parse::<Ipv6Addr>().is_ok() => {
                out.push_str(&after[..close].replace(':', "-"));
                out.push_str(SUFFIX);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(SUFFIX) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(end) = rest.find(SUFFIX) {
        let start = rest[..end].rfind(|c: char| !(c.is_ascii_hexdigit() || c == '-' || c == '.')).map_or(0, |i| i + 1);
        out.push_str(&rest[..start]);
        out.push('[');
        out.push_str(&rest[start..end].replace('-', ":"));
        out.push(']');
        rest = &rest[end + SUFFIX.len()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// A parsed SIP URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri(rsip::Uri);

impl SipUri {
    pub fn parse(s: &str) -> Result<SipUri, String> {
        let uri = rsip::Uri::try_from(encode(s.trim()).as_ref()).map_err(|e| format!("bad URI: {e}"))?;
        if !matches!(uri.scheme, Some(rsip::Scheme::Sip) | Some(rsip::Scheme::Sips)) {
            return Err("not a sip: or sips: URI".into());
        }
        Ok(SipUri(uri))
    }

    pub fn user(&self) -> Option<&str> {
        self.0.user()
    }

    /// Host as written in SIP (IPv6 bracketed), lower-cased.
    pub fn host(&self) -> String {
        decode(&self.0.host().to_string()).to_ascii_lowercase()
    }

    /// The port, if the URI names one.
    pub fn port(&self) -> Option<u16> {
        self.0.host_with_port.port.as_ref().map(|p| *p.value())
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host().trim_start_matches('[').trim_end_matches(']').parse().ok()
    }
}

impl std::fmt::Display for SipUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&decode(&self.0.to_string()))
    }
}

/// A name-addr or addr-spec header value: `"Name" <uri>;params` or `uri;params`.
#[derive(Clone, Debug)]
pub struct NameAddr {
    pub uri: SipUri,
    /// The URI exactly as written, for echoing and as a binding key.
    pub raw_uri: String,
    /// Header parameters (after the URI), e.g. `tag`, `expires`, `q`.
    pub params: Vec<(String, String)>,
}

impl NameAddr {
    pub fn parse(value: &str) -> Result<NameAddr, String> {
        let value = value.trim();
        let (uri, params) = match (value.find('<'), value.find('>')) {
            (Some(open), Some(close)) if open < close => (&value[open + 1..close], &value[close + 1..]),
            (None, None) => match value.find(';') {
                // addr-spec form: parameters after the URI belong to the header (RFC 3261 20).
                Some(i) => (&value[..i], &value[i..]),
                None => (value, ""),
            },
            _ => return Err("unbalanced angle brackets".into()),
        };
        let params = crate::params::split_top_level(params, b';')
            .into_iter()
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
                None => (p.trim().to_ascii_lowercase(), String::new()),
            })
            .collect();
        Ok(NameAddr { uri: SipUri::parse(uri)?, raw_uri: uri.trim().to_string(), params })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_round_trip_through_rsip() {
        let u = SipUri::parse("sip:alice@[2001:db8::1]:5070;transport=tcp").unwrap();
        assert_eq!(u.host(), "[2001:db8::1]");
        assert!(u.to_string().contains(":5070"));
        assert_eq!(u.ip(), Some("2001:db8::1".parse().unwrap()));
        assert!(u.to_string().starts_with("sip:alice@[2001:db8::1]:5070;"), "{u}");
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(r#""Alice" <sip:alice@example.test;transport=tls>;tag=abc;expires=60"#).unwrap();
        assert_eq!((n.uri.user(), n.uri.host().as_str()), (Some("alice"), "example.test"));
        assert_eq!(n.param("tag"), Some("abc"));
        assert_eq!(n.param("expires"), Some("60"));
        let bare = NameAddr::parse("sip:bob@Example.Test;tag=1").unwrap();
        assert_eq!(bare.uri.host(), "example.test");
        assert_eq!(bare.param("tag"), Some("1"));
        assert!(NameAddr::parse("<sip:a@b").is_err());
        assert!(SipUri::parse("http://x").is_err());
    }
}
