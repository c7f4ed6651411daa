//! The Via header: transport, sent-by, and the parameters a server reads or adds
//! (`branch`, `received`, `rport`, RFC 3261 section 18.2.1 and RFC 3581). Parsed here rather than by
//! rsip because rsip 0.4.0 cannot hold an IPv6 sent-by (`[2001:db8::1]:5060`).

use crate::params::{split_first, top_level};
use std::net::{IpAddr, SocketAddr};

/// The first value of a Via header, held as the text it goes on the wire as, with where its
/// parts are: one string rather than a string per part and per parameter (a Via is parsed,
/// stamped and written for every request; its parts were a third of a request's allocations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// `SIP/2.0/`, the transport upper-cased, a space, the sent-by, then each parameter as
    /// `;name` or `;name=value`, without white space.
    text: String,
    /// Where the transport ends (it starts after `SIP/2.0/`; a space follows it).
    transport_end: usize,
    /// Where the host ends (it starts after that space; IPv6 with brackets).
    host_end: usize,
    port: Option<u16>,
    /// Where each parameter is in `text`, in order.
    params: Vec<Param>,
}

/// A parameter's place in a Via's text: `text[start..name_end]` is its name; a value, if any,
/// follows the `=` after it, up to `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Param {
    start: usize,
    name_end: usize,
    end: usize,
}

const PROTOCOL: &str = "SIP/2.0/";

impl Via {
    /// Parses the first value of a Via header (a line may hold several, comma-separated).
    pub fn parse(value: &str) -> Result<Via, String> {
        Via::parse_first(value).map(|(via, _)| via)
    }

    /// Parses the first value of a Via header and returns it with the values after it, unread
    /// (a request's top Via is stamped and the line written back: one split, not two).
    pub fn parse_first(value: &str) -> Result<(Via, &str), String> {
        let (first, rest) = split_first(value, b',').ok_or("empty")?;
        // Neither the protocol nor the sent-by (a host, an IPv6 literal, a port) holds a `;`: the
        // parameters start at the first.
        let params_at = memchr::memchr(b';', first.as_bytes()).unwrap_or(first.len());
        let head = &first[..params_at];
        // Linear white space is SP or HTAB (RFC 3261 25.1): found by byte, not by decoding characters.
        let gap = memchr::memchr2(b' ', b'\t', head.as_bytes()).ok_or("no sent-by")?;
        let transport = transport_of(&head[..gap])?;
        let (host, port) = split_host_port(head[gap + 1..].trim_ascii())?;
        // Room for what a stamp adds (`received`, an `rport` value) without moving.
        let mut text = String::with_capacity(first.len() + 32);
        text.push_str(PROTOCOL);
        text.push_str(transport);
        text[PROTOCOL.len()..].make_ascii_uppercase();
        let transport_end = text.len();
        text.push(' ');
        text.push_str(host);
        let host_end = text.len();
        if let Some(p) = port {
            text.push(':');
            text.push_str(itoa::Buffer::new().format(p));
        }
        let mut params = Vec::with_capacity(4);
        for p in top_level(&first[params_at..], b';') {
            let (k, v) = match memchr::memchr(b'=', p.as_bytes()) {
                Some(i) => (p[..i].trim_ascii(), p[i + 1..].trim_ascii()),
                None => (p, ""),
            };
            if !crate::message::is_token(k) {
                return Err(format!("bad parameter name: {:.20}", k));
            }
            params.push(push_param(&mut text, k, v));
        }
        Ok((Via { text, transport_end, host_end, port, params }, rest))
    }

    /// The Via as it goes on the wire.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `UDP`, `TCP`, `TLS`, ... upper-cased.
    pub fn transport(&self) -> &str {
        &self.text[PROTOCOL.len()..self.transport_end]
    }

    /// The sent-by host as written (IPv6 with brackets).
    pub fn host(&self) -> &str {
        &self.text[self.transport_end + 1..self.host_end]
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// A parameter's value (any case of its name), `""` for a flag.
    pub fn param(&self, name: &str) -> Option<&str> {
        let p = self.params[self.position(name)?];
        Some(self.text.get(p.name_end + 1..p.end).unwrap_or(""))
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch")
    }

    /// Which parameter is `name`. Names compared as bytes: slicing the text as `str` checked
    /// character boundaries at every comparison (several lookups a request).
    fn position(&self, name: &str) -> Option<usize> {
        let text = self.text.as_bytes();
        self.params.iter().position(|p| text[p.start..p.name_end].eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Gives the parameter `name` this value, where it is written, or at the end.
    fn set_param(&mut self, name: &str, value: &str) {
        let Some(i) = self.position(name) else {
            let p = push_param(&mut self.text, name, value);
            self.params.push(p);
            return;
        };
        let p = self.params[i];
        let old_len = self.text.len() as isize;
        if p.end == p.name_end {
            self.text.insert(p.name_end, '=');
        }
        self.text.replace_range(p.name_end + 1..p.end.max(p.name_end + 1), value);
        let moved = self.text.len() as isize - old_len;
        self.params[i].end = p.name_end + 1 + value.len();
        for later in &mut self.params[i + 1..] {
            for at in [&mut later.start, &mut later.name_end, &mut later.end] {
                *at = at.wrapping_add_signed(moved);
            }
        }
    }

    /// Records where the request really came from: `received` when the sent-by host differs from
    /// the source address, and the source port in an empty `rport` (RFC 3581).
    pub fn stamp_source(&mut self, source: SocketAddr) {
        let wants_rport = self.param("rport").is_some();
        if wants_rport {
            self.set_param("rport", itoa::Buffer::new().format(source.port()));
        }
        if wants_rport || host_ip(self.host()) != Some(source.ip()) {
            self.set_param("received", &ip_text(source.ip()));
        }
    }

    /// Where a response to this Via goes over an unreliable transport (RFC 3261 18.2.2, RFC 3581):
    /// the `received` address, else the source's; the reply port.
    pub fn response_target(&self, source: SocketAddr) -> SocketAddr {
        SocketAddr::new(self.received().unwrap_or(source.ip()), self.reply_port())
    }

    /// The source address a hop recorded in `received`, if any.
    pub fn received(&self) -> Option<IpAddr> {
        self.param("received").and_then(|r| r.parse().ok())
    }

    /// The port replies go to: `rport` as a hop filled it in (RFC 3581), else the sent-by port,
    /// else 5060.
    pub fn reply_port(&self) -> u16 {
        self.param("rport").and_then(|p| p.parse().ok()).or(self.port).unwrap_or(5060)
    }
}

/// Appends `;name`, or `;name=value`, and says where it is.
fn push_param(text: &mut String, name: &str, value: &str) -> Param {
    text.push(';');
    let start = text.len();
    text.push_str(name);
    let name_end = text.len();
    if !value.is_empty() {
        text.push('=');
        text.push_str(value);
    }
    Param { start, name_end, end: text.len() }
}

/// The transport of a sent-protocol, `SIP/2.0/transport`.
fn transport_of(proto: &str) -> Result<&str, String> {
    // The usual form by bytes (no letter in `/2.0/` for the case to change); anything else, and
    // every error, by the general rule.
    if let Some(transport) = proto.get(PROTOCOL.len()..)
        && proto[..PROTOCOL.len()].eq_ignore_ascii_case(PROTOCOL)
        && crate::message::is_token(transport)
    {
        return Ok(transport);
    }
    let mut parts = proto.split('/').map(str::trim_ascii);
    let (Some(name), Some(version), Some(transport), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed protocol".into());
    };
    if !name.eq_ignore_ascii_case("SIP") || version != "2.0" || transport.is_empty() {
        return Err("unsupported protocol".into());
    }
    Ok(transport)
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// An address as `received` holds it: IPv4 dotted by hand, IPv6 as `Display` writes it. Numbers
/// are written with `itoa` here, not the formatting machinery, which cost more than the rest of a
/// Via's stamp (callgrind, 2026-12-05).
pub(crate) fn ip_text(ip: IpAddr) -> String {
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
    let (host, port) = match memchr::memrchr(b':', s.as_bytes()) {
        Some(i) => (&s[..i], Some(s[i + 1..].parse().map_err(|_| bad_port(&s[i + 1..]))?)),
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
        assert_eq!((v.transport(), v.host(), v.port()), ("UDP", "[2001:db8::1]", Some(5070)));
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
    fn the_reply_port_is_a_filled_rport_else_the_sent_by_port_else_5060() {
        let port = |v: &str| Via::parse(v).unwrap().reply_port();
        assert_eq!(port("SIP/2.0/UDP h:5070;rport=40000"), 40000);
        assert_eq!(port("SIP/2.0/UDP h:5070;rport"), 5070); // asked for, never filled in
        assert_eq!(port("SIP/2.0/UDP h;rport"), 5060);
        let received = |v: &str| Via::parse(v).unwrap().received();
        assert_eq!(received("SIP/2.0/UDP h;received=192.0.2.7"), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(received("SIP/2.0/UDP h;received=not-an-address"), None);
    }

    #[test]
    fn a_stamp_writes_parameters_in_place_and_those_after_them_still_read() {
        let mut v = Via::parse("sip/2.0/tcp 10.0.0.1:5060 ; rport ; branch=z9hG4bK1;received=192.0.2.99;x").unwrap();
        v.stamp_source("192.0.2.7:40000".parse().unwrap());
        assert_eq!(v.as_str(), "SIP/2.0/TCP 10.0.0.1:5060;rport=40000;branch=z9hG4bK1;received=192.0.2.7;x");
        assert_eq!((v.branch(), v.param("x"), v.param("RPORT")), (Some("z9hG4bK1"), Some(""), Some("40000")));
        assert_eq!((v.transport(), v.host(), v.port()), ("TCP", "10.0.0.1", Some(5060)));
        // A value shorter than the one it replaces moves what follows back.
        let mut v = Via::parse("SIP/2.0/UDP h;rport=65535;branch=z9hG4bK2").unwrap();
        v.stamp_source("192.0.2.7:7".parse().unwrap());
        assert_eq!(v.as_str(), "SIP/2.0/UDP h;rport=7;branch=z9hG4bK2;received=192.0.2.7");
        assert_eq!((v.branch(), v.param("received")), (Some("z9hG4bK2"), Some("192.0.2.7")));
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
        let bad = [
            "garbage",
            "SIP/2.0/UDP",
            "SIP/3.0/UDP h",
            "SIP/2.0/UDP h:xx",
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP h;=x",
            "SIP/2.0/UDP;branch=x h",
            "SIP/2.0/UDP/X h",
            "SIP/2.0/ h",
        ];
        for bad in bad {
            assert!(Via::parse(bad).is_err(), "{bad}");
        }
        let (via, rest) = Via::parse_first("SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b ,SIP/2.0/UDP c").unwrap();
        assert_eq!((via.host(), rest), ("a", " SIP/2.0/TCP b ,SIP/2.0/UDP c"));
        assert!(Via::parse("SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1;rport, SIP/2.0/TCP b").is_ok());
    }
}
