//! What a role's protocol state machine (the Home Server's `home::Core`, the Front-End's
//! `frontend::Proxy`) exchanges with the IO layer (`driver`), in the manner of `quinn-proto`:
//! inputs and the time go in, actions come out, and the answers to actions come back as inputs.

use crate::directory::{DirectoryError, User};
use crate::ops::metrics::Metrics;
use crate::sip::{Message, ParseError};
use crate::store::Write;
use crate::transport::{Flow, Transport};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

/// What either role does with a message that did not parse: counts it and, for a request with
/// somewhere to answer, gives the 400 (or 513) to send, counted as sent.
pub fn answer_malformed(metrics: &Metrics, flow: Flow, e: &ParseError, tag: &str) -> Option<(Message, Flow)> {
    if !e.is_request {
        metrics.count_malformed_response();
        return None;
    }
    metrics.count_malformed_request(flow.remote, &e.reason);
    let (answer, to) = crate::sip::routing::malformed_answer(e, flow, tag)?;
    metrics.count_response(answer.status().unwrap_or(400));
    Some((answer, to))
}

/// A protocol state machine without IO. It never awaits, sleeps, opens a socket or reads a clock.
pub trait Service: Send + 'static {
    fn handle(&mut self, now: Now, input: Input);
    /// Drives timers; called every few tens of milliseconds.
    fn on_tick(&mut self, now: Now);
    /// The actions queued since the last call, in order.
    fn take_actions(&mut self) -> Vec<Action>;
    /// The SIP domains the directory admits (`prep domainadd`), read now and then.
    fn admit_domains(&mut self, domains: Vec<String>);
    /// The `host:port` this server is known by over a transport (for Via, Contact, Path).
    fn set_advertised(&mut self, transport: Transport, host_port: String);
}

/// The time, as the core sees it: a monotonic instant for transaction timers and the wall clock
/// for expiry times that survive a restart. Tests make both up.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn real() -> Now {
        Now { instant: Instant::now(), wall: SystemTime::now() }
    }

    pub fn after(self, d: std::time::Duration) -> Now {
        Now { instant: self.instant + d, wall: self.wall + d }
    }
}

/// Names a piece of work waiting for the answer to an action.
pub type TaskId = u64;

/// What happened, for the core to act on.
#[derive(Debug)]
pub enum Input {
    /// A message arrived on a flow (parsed by the IO layer, or why it could not be).
    Received { flow: Flow, message: Result<Message, ParseError> },
    /// The answers to a `Fetch`.
    Fetched { task: TaskId, facts: Facts },
    /// The answer to a `Store` with a task: the writes are durable, or why not.
    Stored { task: TaskId, result: Result<(), String> },
    /// The request of a client transaction could not be sent (no route, connection refused).
    NotSent { branch: String },
}

/// What the IO layer must do, in the order queued.
#[derive(Debug)]
pub enum Action {
    /// Send bytes along a flow. `branch` names the client transaction whose request this is:
    /// if it cannot be sent, say so with `Input::NotSent`.
    Send { flow: Flow, data: Bytes, branch: Option<String> },
    /// Look these users up in the directory and, if given, resolve a route's host; answer with
    /// `Input::Fetched`.
    Fetch { task: TaskId, users: Vec<String>, resolve: Option<(String, u16)> },
    /// Make these writes durable; with a task, answer with `Input::Stored`.
    Store { task: Option<TaskId>, writes: Vec<Write> },
    /// Drop the directory's cached answer about this user (it moved to another Home Server).
    Forget { user: String },
}

/// What a task learnt from the directory and the resolver.
#[derive(Debug, Default)]
pub struct Facts {
    pub users: FetchedUsers,
    /// The address of the route's host, when `Fetch` asked for one and it resolved.
    pub route: Option<SocketAddr>,
}

/// The users a task fetched, by address of record. A request names one or two: a list searched
/// in order, where a hash map hashed each address (SipHash) to insert it and again at every
/// lookup, several a request.
#[derive(Debug, Default)]
pub struct FetchedUsers(Vec<(String, Result<Option<User>, DirectoryError>)>);

impl FetchedUsers {
    pub fn insert(&mut self, aor: String, found: Result<Option<User>, DirectoryError>) {
        match self.0.iter_mut().find(|(known, _)| *known == aor) {
            Some((_, was)) => *was = found,
            None => self.0.push((aor, found)),
        }
    }

    pub fn get(&self, aor: &str) -> Option<&Result<Option<User>, DirectoryError>> {
        self.0.iter().find(|(known, _)| known == aor).map(|(_, found)| found)
    }
}

impl Facts {
    /// A user fetched for this task. Asking for one that was not fetched is a bug in `needs`.
    pub(crate) fn user(&self, aor: &str) -> Result<Option<&User>, &DirectoryError> {
        match self.users.get(aor) {
            Some(Ok(u)) => Ok(u.as_ref()),
            Some(Err(e)) => Err(e),
            None => {
                debug_assert!(false, "{aor} was not fetched");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetched_users_are_found_by_address_and_a_later_fetch_replaces_an_earlier() {
        let mut users = FetchedUsers::default();
        users.insert("alice@example.test".into(), Ok(None));
        users.insert("bob@example.test".into(), Err(DirectoryError::Unavailable("down".into())));
        users.insert("alice@example.test".into(), Err(DirectoryError::Unavailable("later".into())));
        assert!(matches!(users.get("alice@example.test"), Some(Err(DirectoryError::Unavailable(e))) if e == "later"));
        assert!(matches!(users.get("bob@example.test"), Some(Err(_))));
        assert!(users.get("carol@example.test").is_none());
    }
}
