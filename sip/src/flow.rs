//! Where a message came from and where requests for that peer go back: the transport, the remote
//! address and, for TCP, TLS and WebSocket, which connection (so clients behind NAT are reachable over the
//! connection they opened, RFC 5626 style reuse).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    /// TLS on the internal port: the peer presented a certificate from the deployment CA, so it
    /// is one of this deployment's Front-Ends or Home Servers.
    Internal,
    /// SIP over WebSocket (RFC 7118), plain and over TLS: each WebSocket message is one SIP
    /// message, and requests for the client go back over its connection (it cannot be dialled).
    Ws,
    Wss,
}

impl Transport {
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls | Transport::Internal => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The `transport` URI parameter that names it (RFC 3261 19.1.1, RFC 7118 section 5.2).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls | Transport::Internal => "tls",
            Transport::Ws | Transport::Wss => "ws",
        }
    }
}

/// Where a message came from; for streams, which connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flow {
    pub transport: Transport,
    #[serde(serialize_with = "serialize_remote")]
    pub remote: SocketAddr,
    /// Connection id for TCP/TLS (0 for UDP).
    pub conn: u64,
}

/// The remote address in `SocketAddr`'s own serde form (`192.0.2.7:5060`), an IPv4 one written
/// with `itoa` rather than through `Display`: a binding is stored at every REGISTER, and the
/// formatting machinery was a fifth of its record's cost (callgrind, 2026-12-05).
fn serialize_remote<S: serde::Serializer>(remote: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    match remote {
        SocketAddr::V4(v4) if s.is_human_readable() => {
            let mut text = crate::via::ip_text((*v4.ip()).into());
            text.push(':');
            text.push_str(itoa::Buffer::new().format(v4.port()));
            s.serialize_str(&text)
        }
        _ => remote.serialize(s),
    }
}

impl Flow {
    pub fn datagram(transport: Transport, remote: SocketAddr) -> Flow {
        Flow { transport, remote, conn: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow is stored as it always was, its address in `SocketAddr`'s own form, and reads back.
    #[test]
    fn flows_are_stored_with_the_standard_address_form() {
        for remote in ["192.0.2.7:5060", "0.0.0.0:0", "255.255.255.255:65535", "10.1.20.3:40000", "[2001:db8::1]:5061"]
        {
            let remote: SocketAddr = remote.parse().unwrap();
            let flow = Flow { transport: Transport::Tcp, remote, conn: 7 };
            let json = serde_json::to_value(flow).unwrap();
            assert_eq!(json["remote"], serde_json::to_value(remote).unwrap());
            assert_eq!(serde_json::from_value::<Flow>(json).unwrap(), flow);
        }
    }
}
