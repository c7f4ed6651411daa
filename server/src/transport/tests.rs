//! The transports against real sockets on 127.0.0.1.

use super::*;
use tokio::io::AsyncReadExt;

/// Takes what is read and does nothing with it.
struct Ignore;

impl Handler for Ignore {
    fn on_message(&self, _: Flow, _: Bytes) {}

    fn on_burst(&self, next: &mut dyn FnMut() -> Option<(Flow, Bytes)>) {
        while next().is_some() {}
    }
}

fn transports(message_timeout: Duration) -> Arc<Transports> {
    let limits = Limits {
        message: crate::sip::message::Limits::default(),
        max_connections_per_ip: 8,
        max_connections: 8,
        idle_timeout: Duration::from_secs(60),
        message_timeout,
        max_messages_per_source: 0,
    };
    let transports = Transports::new(limits, Arc::new(Metrics::default()));
    transports.set_handler(Arc::new(Ignore));
    transports
}

/// A connection this server opened to send on stays open while the peer says nothing: the short
/// time to send a first message is for peers that connect, not for those connected to (a Home
/// Server's link to a Front-End that answers on its own link). It was closed after the message
/// timeout, and opened again for the next send.
#[tokio::test]
async fn a_connection_opened_here_outlives_the_message_timeout_while_the_peer_is_silent() {
    let transports = transports(Duration::from_millis(200));
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flow = Flow { transport: Transport::Tcp, remote: peer.local_addr().unwrap(), conn: 0 };
    transports.send(&flow, Bytes::from_static(b"one")).await.unwrap();
    let (mut conn, _) = peer.accept().await.unwrap();
    let mut got = [0u8; 3];
    conn.read_exact(&mut got).await.unwrap();
    // Five message timeouts without a word from the peer: nothing may arrive, not even the end.
    let mut more = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), conn.read(&mut more)).await;
    assert!(read.is_err(), "the connection was closed (or written to) while the peer was silent: {read:?}");
    transports.send(&flow, Bytes::from_static(b"two")).await.unwrap();
    conn.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"two", "the next send goes on the same connection");
}
