//! Routing helpers a proxy and a registrar share: stamping the top Via with where a request really
//! came from, flow tokens (RFC 5626 section 5.2: a Front-End names the client connection in the
//! Path, Record-Route and Via it adds, so that traffic for that client comes back through the
//! connection it holds), and the stateless branch of a forwarded request.

use crate::Message;
use crate::flow::{Flow, Transport};
use crate::via::Via;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};

/// Adds `received`/`rport` to the request's top Via (RFC 3261 18.2.1, RFC 3581) and returns it.
/// A request whose top Via does not parse is malformed (the parser leaves the Via to this, where
/// it is parsed anyway): the error says why, and there is nowhere to send a response.
pub fn stamp_top_via(msg: &mut Message, source: SocketAddr) -> Result<Via, String> {
    let top = msg.headers.first_mut("Via").ok_or("missing Via header")?;
    let (mut via, rest) = Via::parse_first(top).map_err(|e| format!("malformed Via: {e}"))?;
    via.stamp_source(source);
    let mut stamped = String::with_capacity(via.as_str().len() + rest.len() + 2);
    stamped.push_str(via.as_str());
    for other in crate::params::top_level(rest, b',') {
        stamped.push_str(", ");
        stamped.push_str(other);
    }
    *top = stamped;
    Ok(via)
}

/// Where responses to a request that came over `flow` go: back over its connection, or per its
/// top Via (received, rport) over UDP (RFC 3261 18.2.2, RFC 3581).
pub fn response_flow(flow: Flow, via: &Via) -> Flow {
    match flow.transport {
        Transport::Udp => Flow::datagram(Transport::Udp, via.response_target(flow.remote)),
        _ => flow,
    }
}

/// The answer to a request that could not be parsed (513 for a too large one, 400
/// otherwise, with the reason) and where it goes; None when it names no Via to answer to.
pub fn malformed_answer(e: &crate::ParseError, flow: Flow, tag: &str) -> Option<(Message, Flow)> {
    if !e.is_request {
        return None;
    }
    let mut via = Via::parse(e.scan.get("Via")?).ok()?;
    via.stamp_source(flow.remote);
    let code = if e.reason.starts_with("message larger") { 513 } else { 400 };
    let answer = crate::response::from_headers(&crate::message::answerable(&e.scan), code, &e.reason, tag);
    Some((answer, response_flow(flow, &via)))
}

/// A fresh branch for a request this server starts (RFC 3261 8.1.1.7): the magic cookie and 96
/// random bits.
pub fn new_branch() -> String {
    ["z9hG4bK", &crate::hex::encode(rand::random::<[u8; 12]>())].concat()
}

/// The branch of a request forwarded statelessly (RFC 3261 16.11): the same for every
/// retransmission of one request, different for different requests.
pub fn stateless_branch(incoming_top_via: &Via, request_uri: &str, salt: &str) -> String {
    let mut h = Sha256::new();
    for part in [incoming_top_via.as_str(), request_uri, salt] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("z9hG4bK{}", crate::hex::encode(&h.finalize()[..12]))
}

/// Encodes flows as opaque tokens that only this instance, or the group of instances sharing its
/// key, can mint: the minting instance, transport, address and connection, authenticated with
/// the key (a forged or altered token is refused, so a client cannot steer traffic to another
/// client's connection).
///
/// A Front-End's replicas share a key so that any of them can reach a UDP client whose Path
/// names a replica that is gone. A connection exists only in the process that holds it: another
/// instance reads a token for a client's connection as gone, and one for a Home Server's link as
/// "any link to that Home Server".
pub struct FlowTokens {
    key: [u8; 32],
    instance: [u8; INSTANCE_BYTES],
}

const MAC_BYTES: usize = 8;
const INSTANCE_BYTES: usize = 4;

/// What a token that this group minted says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A flow this instance can send on.
    Flow(Flow),
    /// A client's connection held by another instance of the group (or this one before a
    /// restart): it is gone.
    Gone,
}

impl Default for FlowTokens {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowTokens {
    /// Tokens under a fresh random key: only this instance can mint or read them.
    pub fn new() -> FlowTokens {
        FlowTokens { key: rand::random(), instance: rand::random() }
    }

    /// Tokens under a key derived from `secret`, shared by every instance given the same one.
    pub fn shared(secret: &[u8]) -> FlowTokens {
        FlowTokens { key: Sha256::digest(secret).into(), instance: rand::random() }
    }

    fn mac(&self, data: &[u8]) -> [u8; MAC_BYTES] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(data);
        let full = m.finalize().into_bytes();
        full[..MAC_BYTES].try_into().expect("long enough")
    }

    /// A token usable as a SIP URI user part and a Via parameter value (hex).
    pub fn encode(&self, flow: &Flow) -> String {
        let mut data = Vec::with_capacity(40);
        data.extend_from_slice(&self.instance);
        data.push(match flow.transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
            Transport::Internal => 3,
            Transport::Ws => 4,
            Transport::Wss => 5,
        });
        match flow.remote.ip() {
            IpAddr::V4(ip) => data.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => data.extend_from_slice(&ip.octets()),
        }
        data.extend_from_slice(&flow.remote.port().to_be_bytes());
        data.extend_from_slice(&flow.conn.to_be_bytes());
        let mac = self.mac(&data);
        data.extend_from_slice(&mac);
        crate::hex::encode(data)
    }

    /// `None`: not a token of this group (forged, altered, or under another key).
    pub fn decode(&self, token: &str) -> Option<Decoded> {
        let data = hex::decode(token).ok()?;
        let (body, mac) = data.split_at(data.len().checked_sub(MAC_BYTES)?);
        let expected = self.mac(body);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], mac)) {
            return None;
        }
        let (instance, body) = body.split_at_checked(INSTANCE_BYTES)?;
        let transport = match body.first()? {
            0 => Transport::Udp,
            1 => Transport::Tcp,
            2 => Transport::Tls,
            3 => Transport::Internal,
            4 => Transport::Ws,
            5 => Transport::Wss,
            _ => return None,
        };
        let ip: IpAddr = match body.len() {
            15 => <[u8; 4]>::try_from(&body[1..5]).ok()?.into(),
            27 => <[u8; 16]>::try_from(&body[1..17]).ok()?.into(),
            _ => return None,
        };
        let rest = &body[body.len() - 10..];
        let port = u16::from_be_bytes([rest[0], rest[1]]);
        let conn = u64::from_be_bytes(rest[2..].try_into().ok()?);
        let flow = Flow { transport, remote: SocketAddr::new(ip, port), conn };
        if instance == self.instance {
            return Some(Decoded::Flow(flow));
        }
        // Connection ids are this process's own: another's would name an unrelated connection.
        Some(match transport {
            Transport::Udp => Decoded::Flow(flow),
            Transport::Internal => Decoded::Flow(Flow { conn: 0, ..flow }),
            Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => Decoded::Gone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_branch_carries_the_cookie_and_is_new_each_time() {
        let (a, b) = (new_branch(), new_branch());
        assert!(a.starts_with("z9hG4bK") && a.len() == 7 + 24, "{a}");
        assert!(a[7..].bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn tokens_round_trip_and_refuse_forgeries() {
        let t = FlowTokens::new();
        for flow in [
            Flow { transport: Transport::Tcp, remote: "192.0.2.7:40000".parse().unwrap(), conn: 42 },
            Flow::datagram(Transport::Udp, "[2001:db8::1]:5060".parse().unwrap()),
            Flow { transport: Transport::Wss, remote: "192.0.2.8:50000".parse().unwrap(), conn: 7 },
        ] {
            let token = t.encode(&flow);
            assert_eq!(t.decode(&token), Some(Decoded::Flow(flow)));
            // One flipped character, or another instance's key: refused.
            let mut forged = token.clone().into_bytes();
            forged[3] = if forged[3] == b'0' { b'1' } else { b'0' };
            assert_eq!(t.decode(std::str::from_utf8(&forged).unwrap()), None);
            assert_eq!(FlowTokens::new().decode(&token), None);
        }
        assert_eq!(t.decode("zz"), None);
        assert_eq!(t.decode(""), None);
    }

    /// Replicas sharing a key read each other's tokens, but only as far as a flow outlives the
    /// process that holds it: a UDP client's address, a Home Server's link without its
    /// connection id, and a client's connection as gone.
    #[test]
    fn replicas_sharing_a_key_read_what_outlives_the_replica_that_minted_it() {
        let (a, b) = (FlowTokens::shared(b"domain secret"), FlowTokens::shared(b"domain secret"));
        let udp = Flow::datagram(Transport::Udp, "192.0.2.9:5060".parse().unwrap());
        let tcp = Flow { transport: Transport::Tcp, remote: "192.0.2.7:40000".parse().unwrap(), conn: 42 };
        let link = Flow { transport: Transport::Internal, remote: "10.0.0.5:5070".parse().unwrap(), conn: 3 };
        assert_eq!(b.decode(&a.encode(&udp)), Some(Decoded::Flow(udp)));
        assert_eq!(b.decode(&a.encode(&tcp)), Some(Decoded::Gone));
        assert_eq!(b.decode(&a.encode(&link)), Some(Decoded::Flow(Flow { conn: 0, ..link })));
        assert_eq!(a.decode(&a.encode(&tcp)), Some(Decoded::Flow(tcp)));
        assert_eq!(FlowTokens::shared(b"another domain").decode(&a.encode(&udp)), None);
    }

    #[test]
    fn stateless_branches_repeat_for_retransmissions_only() {
        let via = Via::parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc").unwrap();
        let other = Via::parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabd").unwrap();
        let b = stateless_branch(&via, "sip:bob@example.test", "x");
        assert!(b.starts_with("z9hG4bK"));
        assert_eq!(b, stateless_branch(&via, "sip:bob@example.test", "x"));
        assert_ne!(b, stateless_branch(&other, "sip:bob@example.test", "x"));
    }
}
