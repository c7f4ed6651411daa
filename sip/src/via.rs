//! The Via header: transport, sent-by, and the parameters a server reads or adds
//! (`branch`, `received`, `rport`, RFC 3261 section 18.2.1 and RFC 3581). Parsed here rather than by
//! rsip because rsip 0.4.0 cannot hold an IPv6 sent-by (`[2001:db8::1]:5060`).

use crate::params::top_level;
use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`, `TLS`, ... upper-cased.
    pub transport: String,
    /// Host as written (IPv6 with brackets), and port if given.
    pub host: String,
    pub port: Option<u16>,
    /// Parameters in order; a flag has an empty value.
    pub params: Vec<(String, String)>,
}

impl Via {
    /// Parses the first value of a Via header (a line may hold several, comma-separated).
    pub fn parse(value: &str) -> Result<Via, String> {
        let mut params = Vec::new();
        let (transport, host, port) = read(value, |k, v| params.push((k.to_string(), v.to_string())))?;
        Ok(Via { transport: transport.to_ascii_uppercase(), host: host.to_string(), port, params })
    }

    /// Whether the first value of a Via header parses, keeping nothing (every request's is
    /// checked before it is handled, and parsed again only where it is used).
    pub fn check(value: &str) -> Result<(), String> {
        read(value, |_, _| {}).map(|_| ())
    }

    /// Appends the Via as it goes on the wire. Pushed piece by piece into the string: a Via is
    /// written for every request, and through a `Formatter` each piece cost a dynamic call.
    pub fn write_to(&self, out: &mut String) {
        for piece in ["SIP/2.0/", &self.transport, " ", &self.host] {
            out.push_str(piece);
        }
        if let Some(p) = self.port {
            out.push(':');
            out.push_str(itoa::Buffer::new().format(p));
        }
        for (k, v) in &self.params {
            out.push(';');
            out.push_str(k);
            if !v.is_empty() {
                out.push('=');
                out.push_str(v);
            }
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch")
    }

    fn set_param(&mut self, name: &str, value: String) {
        match self.params.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some((_, v)) => *v = value,
            None => self.params.push((name.to_string(), value)),
        }
    }

    /// Records where the request really came from: `received` when the sent-by host differs from
    /// the source address, and the source port in an empty `rport` (RFC 3581).
    pub fn stamp_source(&mut self, source: SocketAddr) {
        let wants_rport = self.param("rport").is_some();
        if wants_rport {
            self.set_param("rport", itoa::Buffer::new().format(source.port()).to_string());
        }
        let sent_by_ip = host_ip(&self.host);
        if wants_rport || sent_by_ip != Some(source.ip()) {
            self.set_param("received", ip_text(source.ip()));
        }
    }

    /// Where a response to this Via goes over an unreliable transport (RFC 3261 18.2.2, RFC 3581):
    /// received address (or sent-by), with rport if given, else the sent-by port.
    pub fn response_target(&self, source: SocketAddr) -> SocketAddr {
        let ip = self.param("received").and_then(|r| r.parse().ok()).unwrap_or(source.ip());
        let port = match self.param("rport").and_then(|p| p.parse().ok()) {
            Some(p) => p,
            None => self.port.unwrap_or(5060),
        };
        SocketAddr::new(ip, port)
    }
}

/// Reads the first value of a Via header, borrowing from it: transport, host and port returned,
/// each parameter handed to `param` in order.
fn read<'a>(
    value: &'a str,
    mut param: impl FnMut(&'a str, &'a str),
) -> Result<(&'a str, &'a str, Option<u16>), String> {
    let (first, _) = crate::params::split_first(value, b',').ok_or("empty")?;
    let mut parts = top_level(first, b';');
    let proto_and_host = parts.next().ok_or("empty")?;
    // Linear white space is SP or HTAB (RFC 3261 25.1): found by byte, not by decoding characters.
    let gap = proto_and_host.bytes().position(|b| b == b' ' || b == b'\t').ok_or("no sent-by")?;
    let (proto, sent_by) = (&proto_and_host[..gap], &proto_and_host[gap + 1..]);
    let mut proto_parts = proto.split('/').map(str::trim_ascii);
    let (Some(name), Some(version), Some(transport), None) =
        (proto_parts.next(), proto_parts.next(), proto_parts.next(), proto_parts.next())
    else {
        return Err("malformed protocol".into());
    };
    if !name.eq_ignore_ascii_case("SIP") || version != "2.0" || transport.is_empty() {
        return Err("unsupported protocol".into());
    }
    let (host, port) = split_host_port(sent_by.trim_ascii())?;
    for p in parts {
        let (k, v) = p.split_once('=').map_or((p, ""), |(k, v)| (k.trim_ascii(), v.trim_ascii()));
        if !crate::message::is_token(k) {
            return Err(format!("bad parameter name: {:.20}", k));
        }
        param(k, v);
    }
    Ok((transport, host, port))
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::with_capacity(96);
        self.write_to(&mut out);
        f.write_str(&out)
    }
}

/// An address as `received` holds it: IPv4 dotted by hand, IPv6 as `Display` writes it. Numbers
/// are written with `itoa` here, not the formatting machinery, which cost more than the rest of a
/// Via's stamp (callgrind, 2026-12-05).
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(itoa::Buffer::new().format(octet));
            }
            out
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// A host as SIP writes it (an IPv6 literal in brackets) as an IP address, when it is one.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse().ok()
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 literal (returned with its brackets).
pub fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = |p: &str| format!("bad port: {:.8}", p);
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or("unterminated IPv6 literal")?;
        addr.parse::<std::net::Ipv6Addr>().map_err(|_| "bad IPv6 literal".to_string())?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad_port(p))?),
            None if after.is_empty() => None,
            None => return Err("junk after IPv6 literal".into()),
        };
        return Ok((&s[..addr.len() + 2], port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().map_err(|_| bad_port(p))?)),
        None => (s, None),
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        return Err(format!("bad host: {:.40}", host));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sent_by_and_rport() {
        let mut v = Via::parse("SIP/2.0/udp [2001:db8::1]:5070;branch=z9hG4bKx;rport, SIP/2.0/TCP b").unwrap();
        assert_eq!((v.transport.as_str(), v.host.as_str(), v.port), ("UDP", "[2001:db8::1]", Some(5070)));
        assert_eq!(v.branch(), Some("z9hG4bKx"));
        let src: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        v.stamp_source(src);
        assert_eq!(v.to_string(), "SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKx;rport=40000;received=2001:db8::1");
        assert_eq!(v.response_target(src), src);
    }

    #[test]
    fn received_is_added_only_when_the_host_differs() {
        let mut v = Via::parse("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1").unwrap();
        let src: SocketAddr = "192.0.2.7:5060".parse().unwrap();
        v.stamp_source(src);
        assert_eq!(v.param("received"), Some("192.0.2.7"));
        assert_eq!(v.response_target(src), "192.0.2.7:5060".parse().unwrap());
        let mut same = Via::parse("SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1").unwrap();
        same.stamp_source(src);
        assert_eq!(same.param("received"), None);
        assert_eq!(same.response_target(src), "192.0.2.7:5062".parse().unwrap());
    }

    #[test]
    fn hosts_read_as_addresses_with_or_without_brackets() {
        assert_eq!(host_ip("[2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(host_ip("192.0.2.7"), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(host_ip("example.test"), None);
        assert_eq!(host_ip("[example.test]"), None);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.30.40", "255.255.255.255", "2001:db8::1", "::ffff:1.2.3.4"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn garbage_is_rejected() {
        let bad =
            ["garbage", "SIP/2.0/UDP", "SIP/3.0/UDP h", "SIP/2.0/UDP h:xx", "SIP/2.0/UDP [::1", "SIP/2.0/UDP h;=x"];
        for bad in bad {
            assert!(Via::parse(bad).is_err(), "{bad}");
            assert_eq!(Via::check(bad), Via::parse(bad).map(|_| ()), "{bad}");
        }
        assert_eq!(Via::check("SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1;rport, SIP/2.0/TCP b"), Ok(()));
    }
}
