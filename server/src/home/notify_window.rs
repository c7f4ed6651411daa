//! How NOTIFYs leave: at most `WINDOW` unanswered at once, the next as each is answered, so a
//! change many watch does not go out as one burst that the receivers' sockets (or the network)
//! drop, only for retransmissions to deliver it seconds later. A NOTIFY unanswered after `HOLD`
//! gives up its place: subscribers that are gone answer nothing for 32 s and must not stall the
//! others (with every receiver silent, NOTIFYs still leave at `WINDOW` per `HOLD`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// NOTIFYs unanswered at once, at most.
pub const WINDOW: usize = 256;
/// How long an unanswered NOTIFY holds its place in the window.
pub const HOLD: Duration = Duration::from_millis(100);

pub struct NotifyWindow<T> {
    waiting: VecDeque<T>,
    /// Tickets of NOTIFYs holding a place, and when each was sent (tickets rise with time).
    places: BTreeMap<u64, Instant>,
    next_ticket: u64,
}

impl<T> Default for NotifyWindow<T> {
    fn default() -> Self {
        NotifyWindow { waiting: VecDeque::new(), places: BTreeMap::new(), next_ticket: 0 }
    }
}

impl<T> NotifyWindow<T> {
    pub fn push(&mut self, notify: T) {
        self.waiting.push_back(notify);
    }

    /// The NOTIFYs that may be sent now, in the order they were pushed, each with the ticket to
    /// hand back to `answered`.
    pub fn ready(&mut self, now: Instant) -> Vec<(u64, T)> {
        while let Some(entry) = self.places.first_entry() {
            if now.duration_since(*entry.get()) < HOLD {
                break;
            }
            entry.remove();
        }
        let room = WINDOW.saturating_sub(self.places.len()).min(self.waiting.len());
        let mut out = Vec::with_capacity(room);
        for notify in self.waiting.drain(..room) {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            self.places.insert(ticket, now);
            out.push((ticket, notify));
        }
        out
    }

    /// The NOTIFY with `ticket` was answered, or ended unanswered.
    pub fn answered(&mut self, ticket: u64) {
        self.places.remove(&ticket);
    }

    /// NOTIFYs not sent yet.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_at_a_time_and_silent_receivers_give_up_their_place() {
        let t0 = Instant::now();
        let mut w = NotifyWindow::default();
        for i in 0..WINDOW * 3 {
            w.push(i);
        }
        let first = w.ready(t0);
        assert_eq!(first.iter().map(|(_, n)| *n).collect::<Vec<_>>(), (0..WINDOW).collect::<Vec<_>>());
        assert!(w.ready(t0).is_empty(), "the window is full");
        // One answer, one more.
        w.answered(first[7].0);
        assert_eq!(w.ready(t0).iter().map(|(_, n)| *n).collect::<Vec<_>>(), [WINDOW]);
        // Nobody answers: after HOLD the silent ones give up their places.
        assert!(w.ready(t0 + HOLD / 2).is_empty());
        assert_eq!(w.ready(t0 + HOLD).len(), WINDOW);
        assert_eq!(w.waiting(), WINDOW - 1);
        w.answered(first[0].0); // a late answer to one that gave up its place changes nothing
        assert!(w.ready(t0 + HOLD).is_empty());
    }
}
