//! RFC 3261 section 17 non-INVITE transactions as sans-IO state machines: they take requests,
//! responses and the current time, and say what to send; the IO layer owns sockets and clocks.

mod client;
mod server;

pub use client::{ClientAction, ClientTransactions, ResponseEvent};
pub use server::{ServerEvent, ServerTransactions, TxnKey};

use std::time::Duration;

/// Timer base values (RFC 3261 table 4).
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl Timers {
    /// 64*T1: how long a transaction may live (timers F and J).
    pub fn transaction_timeout(&self) -> Duration {
        self.t1 * 64
    }
}
