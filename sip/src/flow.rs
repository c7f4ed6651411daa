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
    pub remote: SocketAddr,
    /// Connection id for TCP/TLS (0 for UDP).
    pub conn: u64,
}

impl Flow {
    pub fn datagram(transport: Transport, remote: SocketAddr) -> Flow {
        Flow { transport, remote, conn: 0 }
    }
}
