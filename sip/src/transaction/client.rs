//! Client non-INVITE transactions (RFC 3261 17.1.2): timer E retransmits over UDP (T1 doubling to
//! T2, then T2 after a provisional response), timer F times out at 64*T1, timer K absorbs
//! retransmitted responses for T4.

use super::Timers;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Trying,
    Proceeding,
    Completed,
}

#[derive(Debug)]
struct Txn<T> {
    state: State,
    reliable: bool,
    retransmit_at: Option<Instant>,
    interval: Duration,
    timeout_at: Instant,
    data: T,
}

impl<T> Txn<T> {
    fn next_wake(&self) -> Instant {
        match (self.state, self.retransmit_at) {
            (State::Completed, _) | (_, None) => self.timeout_at,
            (_, Some(r)) => r.min(self.timeout_at),
        }
    }
}

/// What a timer asks of the IO layer.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Send the request again (timer E).
    Retransmit,
    /// No final response in time (timer F): the transaction is over; act as on a 408.
    Timeout,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ResponseEvent {
    Provisional,
    /// The first final response: pass it on. The transaction lingers (UDP) to absorb repeats.
    Final,
    /// A repeated final response, or one for no known transaction.
    Ignore,
}

/// Client transactions keyed by branch, each carrying the IO layer's data `T` (the request bytes,
/// where it goes, who waits for the answer).
#[derive(Debug)]
pub struct ClientTransactions<T> {
    timers: Timers,
    txns: HashMap<String, Txn<T>>,
    wakeups: BinaryHeap<Reverse<(Instant, String)>>,
}

impl<T> ClientTransactions<T> {
    pub fn new(timers: Timers) -> Self {
        ClientTransactions { timers, txns: HashMap::new(), wakeups: BinaryHeap::new() }
    }

    /// Starts a transaction whose request the caller has just sent.
    pub fn start(&mut self, branch: String, reliable: bool, data: T, now: Instant) {
        let txn = Txn {
            state: State::Trying,
            reliable,
            retransmit_at: (!reliable).then(|| now + self.timers.t1),
            interval: self.timers.t1,
            timeout_at: now + self.timers.transaction_timeout(),
            data,
        };
        self.wakeups.push(Reverse((txn.next_wake(), branch.clone())));
        self.txns.insert(branch, txn);
    }

    /// Feeds a response; on `Final` the caller reads the data with `data_mut` to pass it on.
    pub fn on_response(&mut self, branch: &str, status: u16, now: Instant) -> ResponseEvent {
        let Some(txn) = self.txns.get_mut(branch) else {
            return ResponseEvent::Ignore;
        };
        match (txn.state, status) {
            (State::Completed, _) => ResponseEvent::Ignore,
            (_, 100..=199) => {
                if txn.state == State::Trying && !txn.reliable {
                    txn.retransmit_at = Some(now + self.timers.t2);
                    txn.interval = self.timers.t2;
                    self.wakeups.push(Reverse((txn.next_wake(), branch.to_string())));
                }
                txn.state = State::Proceeding;
                ResponseEvent::Provisional
            }
            _ => {
                txn.state = State::Completed;
                txn.retransmit_at = None;
                txn.timeout_at = if txn.reliable { now } else { now + self.timers.t4 };
                self.wakeups.push(Reverse((txn.timeout_at, branch.to_string())));
                ResponseEvent::Final
            }
        }
    }

    pub fn data_mut(&mut self, branch: &str) -> Option<&mut T> {
        self.txns.get_mut(branch).map(|t| &mut t.data)
    }

    /// Runs due timers. `act` is called with each retransmission or timeout and the transaction's
    /// data; completed transactions whose timer K ran out are dropped silently.
    pub fn on_timer(&mut self, now: Instant, mut act: impl FnMut(ClientAction, &mut T)) {
        while let Some(Reverse((at, _))) = self.wakeups.peek() {
            if *at > now {
                break;
            }
            let Reverse((at, branch)) = self.wakeups.pop().expect("peeked");
            let Some(txn) = self.txns.get_mut(&branch) else {
                continue;
            };
            if txn.next_wake() != at {
                continue; // superseded by a later wake-up
            }
            if txn.state == State::Completed {
                self.txns.remove(&branch);
            } else if at >= txn.timeout_at {
                let mut txn = self.txns.remove(&branch).expect("present");
                act(ClientAction::Timeout, &mut txn.data);
            } else {
                act(ClientAction::Retransmit, &mut txn.data);
                if txn.state == State::Trying {
                    txn.interval = (txn.interval * 2).min(self.timers.t2);
                }
                txn.retransmit_at = Some(at + txn.interval);
                self.wakeups.push(Reverse((txn.next_wake(), branch)));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(c: &mut ClientTransactions<u32>, t: Instant) -> Vec<ClientAction> {
        let mut out = Vec::new();
        c.on_timer(t, |a, _| out.push(a));
        out
    }

    #[test]
    fn timer_e_doubles_to_t2_and_timer_f_times_out() {
        let mut c = ClientTransactions::new(Timers::default());
        let t0 = Instant::now();
        c.start("b".into(), false, 7, t0);
        let mut sends = Vec::new();
        let mut t = t0;
        while !c.is_empty() {
            t += Duration::from_millis(50);
            for a in run(&mut c, t) {
                sends.push((a, (t - t0).as_millis() / 50 * 50));
            }
        }
        let retransmits: Vec<u128> =
            sends.iter().filter(|(a, _)| *a == ClientAction::Retransmit).map(|(_, at)| *at).collect();
        assert_eq!(&retransmits[..5], &[500, 1500, 3500, 7500, 11500]);
        assert_eq!(sends.last(), Some(&(ClientAction::Timeout, 32000)));
    }

    #[test]
    fn final_response_stops_retransmission_and_repeats_are_ignored() {
        let mut c = ClientTransactions::new(Timers::default());
        let t0 = Instant::now();
        c.start("b".into(), false, 1, t0);
        assert_eq!(c.on_response("b", 200, t0), ResponseEvent::Final);
        assert_eq!(c.on_response("b", 200, t0), ResponseEvent::Ignore);
        assert!(run(&mut c, t0 + Duration::from_secs(2)).is_empty());
        run(&mut c, t0 + Duration::from_secs(6));
        assert_eq!(c.len(), 0);
        assert_eq!(c.on_response("unknown", 200, t0), ResponseEvent::Ignore);
    }

    #[test]
    fn reliable_transport_never_retransmits() {
        let mut c = ClientTransactions::new(Timers::default());
        let t0 = Instant::now();
        c.start("b".into(), true, 1, t0);
        assert_eq!(run(&mut c, t0 + Duration::from_secs(31)), vec![]);
        assert_eq!(run(&mut c, t0 + Duration::from_secs(32)), vec![ClientAction::Timeout]);
    }
}
