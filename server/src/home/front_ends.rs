//! The Front-End replicas this Home Server hears from. A client's binding names, in its Path, the
//! replica it signed in through; when that replica is gone, a request for the client goes through
//! another one instead (the replicas share their flow-token key, so any of them can reach a UDP
//! client; a client's connection went with its replica, and the one used answers 430).
//!
//! A replica is known live by its probes on the internal link (every Front-End sends every Home
//! Server an OPTIONS twice a second by default), and is reached over the very link it opened.

use crate::transport::{Flow, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A link that carried a probe this recently belongs to a live replica.
const HEARD_WITHIN: Duration = Duration::from_secs(2);
/// How long a replica's address stays avoided after a send to it failed.
const GONE_FOR: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct FrontEndLinks {
    /// Internal links probes arrived on, by connection, and when the last one did.
    heard: HashMap<u64, (Flow, Instant)>,
    /// Front-End addresses a send failed to, and when.
    gone: HashMap<SocketAddr, Instant>,
}

impl FrontEndLinks {
    /// A probe arrived over `flow`.
    pub fn heard(&mut self, flow: Flow, now: Instant) {
        if flow.transport == Transport::Internal {
            self.heard.insert(flow.conn, (flow, now));
        }
    }

    /// Where a request for `flow` goes: another replica's link when its address is known gone.
    pub fn route(&self, flow: Flow, now: Instant) -> Flow {
        let gone = self.gone.get(&flow.remote).is_some_and(|at| now.duration_since(*at) < GONE_FOR);
        if flow.transport == Transport::Internal && gone { self.live(now).unwrap_or(flow) } else { flow }
    }

    /// A send over `flow` failed: its address is avoided for a while, and another live
    /// replica's link is returned, if there is one.
    pub fn failed(&mut self, flow: Flow, now: Instant) -> Option<Flow> {
        if flow.transport != Transport::Internal {
            return None;
        }
        self.gone.insert(flow.remote, now);
        self.heard.retain(|_, (f, _)| f.remote != flow.remote && f.conn != flow.conn);
        self.live(now)
    }

    /// A request came through the replica at `addr` (its Path or Record-Route names it): it is
    /// live (again: a replica restarted in place keeps its address).
    pub fn came_through(&mut self, addr: SocketAddr) {
        self.gone.remove(&addr);
    }

    /// The link most recently heard from, of a replica not known gone.
    fn live(&self, now: Instant) -> Option<Flow> {
        self.heard
            .values()
            .filter(|(f, at)| now.duration_since(*at) < HEARD_WITHIN && !self.gone.contains_key(&f.remote))
            .max_by_key(|(_, at)| *at)
            .map(|(f, _)| *f)
    }

    /// Forgets links not heard from and addresses avoided long enough.
    pub fn purge(&mut self, now: Instant) {
        self.heard.retain(|_, (_, at)| now.duration_since(*at) < HEARD_WITHIN);
        self.gone.retain(|_, at| now.duration_since(*at) < GONE_FOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(addr: &str, conn: u64) -> Flow {
        Flow { transport: Transport::Internal, remote: addr.parse().unwrap(), conn }
    }

    #[test]
    fn a_failed_replica_is_replaced_by_the_one_heard_from_last_and_avoided_for_a_while() {
        let t0 = Instant::now();
        let mut links = FrontEndLinks::default();
        let (a_path, a_link, b_link) = (link("10.0.0.1:5070", 7), link("10.0.0.1:40001", 7), link("10.0.0.2:40002", 9));
        links.heard(a_link, t0);
        links.heard(b_link, t0 + Duration::from_millis(100));
        assert_eq!(links.route(a_path, t0), a_path, "nothing failed yet");

        // a's listener refuses: b's link instead, and a's address is skipped from then on.
        assert_eq!(links.failed(a_path, t0 + Duration::from_millis(200)), Some(b_link));
        assert_eq!(links.route(a_path, t0 + Duration::from_secs(1)), b_link);
        // Until b falls silent too (then the Path is tried again), or the avoidance lapses.
        assert_eq!(links.route(a_path, t0 + Duration::from_secs(3)), a_path);
        links.heard(b_link, t0 + Duration::from_secs(31));
        assert_eq!(links.route(a_path, t0 + Duration::from_secs(31)), a_path);

        // A replica restarted at the same address is used again once a request comes through it.
        links.failed(a_path, t0 + Duration::from_secs(31));
        links.came_through(a_path.remote);
        assert_eq!(links.route(a_path, t0 + Duration::from_secs(31)), a_path);

        // Nothing else live: no alternative; a client's own flow is never rerouted.
        assert_eq!(links.failed(b_link, t0 + Duration::from_secs(32)), None);
        let udp = Flow::datagram(Transport::Udp, "192.0.2.1:5060".parse().unwrap());
        assert_eq!(links.failed(udp, t0), None);
        links.purge(t0 + Duration::from_secs(100));
        assert!(links.heard.is_empty() && links.gone.is_empty());
    }
}
