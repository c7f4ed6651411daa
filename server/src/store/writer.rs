//! The store's writer: journal, keep, answer; checkpoint when due, in the background. Its own
//! thread runs it for writes queued with `submit`; a thread that staged writes runs it itself
//! (`commit_staged`), one writer at a time, each taking the queue in order.
//!
//! Two journal files take turns. A checkpoint makes the other one (empty) the journal, then a
//! thread of its own gives redb what is kept in one durable commit and empties the former
//! journal, while the writer goes on journalling and answering: no request waits behind the
//! commit (5 to 15 ms for 2,000 writes here; done by the writer itself, it held every request
//! arriving meanwhile). A file's epoch says which is older, so a crash in the middle of a
//! checkpoint replays both in order.

use super::journal::Journal;
use super::{Batch, Store, Write};
use redb::{Database, Durability};
#[cfg(test)]
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// While a background checkpoint runs, how often the writer looks whether it has finished.
const RUNNING_POLL: Duration = Duration::from_millis(5);

/// When the writer checkpoints (tests wait longer, to look at a journal before it empties).
#[derive(Clone)]
pub(super) struct Checkpoints {
    pub every: Duration,
    pub writes: usize,
    /// Tests: a background checkpoint waits for a message here before it commits.
    #[cfg(test)]
    pub gate: Option<Arc<Mutex<Receiver<()>>>>,
}

impl Checkpoints {
    pub fn new(every: Duration, writes: usize) -> Checkpoints {
        Checkpoints {
            every,
            writes,
            #[cfg(test)]
            gate: None,
        }
    }
}

/// What the writer thread and a checkpoint share with the readers.
#[derive(Clone)]
pub(super) struct Shared {
    pub db: Arc<Database>,
    /// Journalled (acknowledged) writes redb has not taken yet, in order.
    pub unapplied: Arc<Mutex<Vec<Write>>>,
    /// Held by a checkpoint from taking the kept writes until redb holds them: a reader waits
    /// for it, so it never misses writes in flight between the two. Taken before `unapplied`.
    pub committing: Arc<Mutex<()>>,
}

impl Shared {
    pub fn unapplied(&self) -> MutexGuard<'_, Vec<Write>> {
        self.unapplied.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn committing(&self) -> MutexGuard<'_, ()> {
        self.committing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives redb every kept write in one durable commit (which also makes durable the commits
    /// readers made without syncing); on failure the writes are kept again, before newer ones,
    /// and the error says how many.
    fn checkpoint(&self) -> Result<(), (usize, String)> {
        let _committing = self.committing();
        let writes = std::mem::take(&mut *self.unapplied());
        let started = Instant::now();
        match Store::apply_now(&self.db, &writes, Durability::Immediate) {
            Ok(()) => {
                tracing::debug!(writes = writes.len(), took = ?started.elapsed(), "store checkpoint");
                Ok(())
            }
            Err(e) => {
                let e = format!("{e:#}");
                tracing::error!(error = %e, "store checkpoint failed: the journal keeps the writes");
                let n = writes.len();
                let mut kept = self.unapplied();
                let newer = std::mem::replace(&mut *kept, writes);
                kept.extend(newer);
                Err((n, e))
            }
        }
    }
}

/// The writer and its queue, shared by the writer thread and by threads that commit what they
/// staged themselves (the UDP reader: a write it commits costs no wake-up of the writer thread and
/// back, which at a light load was a third of a registration's CPU).
pub(super) struct Committer {
    writer: Mutex<Writer>,
    queue: Queue,
}

impl Committer {
    pub fn new(writer: Writer) -> Committer {
        Committer { writer: Mutex::new(writer), queue: Queue::default() }
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a batch (an empty one is a flush). With `wake`, the writer thread commits it; without,
    /// the caller commits it (`commit_staged`), or it goes with the next commit. Once the writer
    /// has stopped, the batch is dropped, which its caller hears as an error.
    pub fn queue(&self, batch: Batch, wake: bool) {
        let mut waiting = self.queue.lock();
        if !waiting.stopped {
            waiting.batches.push(batch);
            drop(waiting);
            if wake {
                self.queue.wake.notify_one();
            }
        }
    }

    /// Journals what is queued, on the calling thread.
    pub fn commit_staged(&self) {
        let mut writer = self.writer();
        let before = writer.due_at();
        writer.step(&self.queue);
        // The writer thread sleeps until the deadline it last saw: a checkpoint now due is its job.
        if before.is_none() && writer.due_at().is_some() {
            self.queue.lock().nudged = true; // seen even if it is not yet asleep
            self.queue.wake.notify_one();
        }
    }

    /// Waits (10 s at most) until the writer thread sleeps: what is queued after that stays
    /// queued until something wakes it.
    #[cfg(test)]
    pub fn until_the_writer_thread_sleeps(&self) {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !self.queue.lock().asleep {
            assert!(Instant::now() < deadline, "the writer thread never went to sleep");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Tells the writer thread to finish what is queued, checkpoint and return.
    pub fn stop(&self) {
        self.queue.lock().stopped = true;
        self.queue.wake.notify_one();
    }

    /// The writer thread: commits what is queued for it and runs checkpoints when due. When told
    /// to stop: a last checkpoint. However it ends, later batches are refused.
    pub fn run(&self) {
        struct Refuse<'a>(&'a Queue);
        impl Drop for Refuse<'_> {
            fn drop(&mut self) {
                let mut waiting = self.0.lock();
                waiting.stopped = true;
                waiting.batches.clear();
            }
        }
        let _refuse = Refuse(&self.queue);
        loop {
            let due_at = self.writer().due_at();
            let stopped = self.queue.wait(due_at);
            let mut writer = self.writer();
            if stopped {
                let _ = writer.checkpoint_now();
                return;
            }
            writer.step(&self.queue);
        }
    }
}

/// Batches waiting to be journalled, in the order they were queued.
#[derive(Default)]
struct Queue {
    waiting: Mutex<Waiting>,
    /// Wakes the writer thread: a batch for it, a new deadline, or the end.
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    batches: Vec<Batch>,
    stopped: bool,
    /// The writer thread's deadline may have changed since it last looked.
    nudged: bool,
    /// The writer thread waits on the condvar (what a test waits for before staging).
    #[cfg(test)]
    asleep: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Vec<Batch> {
        std::mem::take(&mut self.lock().batches)
    }

    /// Waits for batches, the end, `until` or a nudge; true once told to stop with nothing left.
    fn wait(&self, until: Option<Instant>) -> bool {
        let mut waiting = self.lock();
        if waiting.batches.is_empty() && !waiting.stopped && !std::mem::take(&mut waiting.nudged) {
            #[cfg(test)]
            {
                waiting.asleep = true;
            }
            waiting = match until {
                None => self.wake.wait(waiting).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let timeout = at.saturating_duration_since(Instant::now());
                    self.wake.wait_timeout(waiting, timeout).unwrap_or_else(|p| p.into_inner()).0
                }
            };
            #[cfg(test)]
            {
                waiting.asleep = false;
            }
        }
        waiting.stopped && waiting.batches.is_empty()
    }
}

/// A checkpoint running in the background: the former journal comes back with its result (the
/// number of writes it had to put back, on failure).
type Running = JoinHandle<(Journal, Result<(), (usize, String)>)>;

pub(super) struct Writer {
    shared: Shared,
    every: Checkpoints,
    /// Where writes are journalled.
    active: Journal,
    /// The other file, empty: the next checkpoint's journal. `None` while a checkpoint runs.
    spare: Option<Journal>,
    /// A former journal whose checkpoint failed: it still holds writes redb may not have.
    failed: Option<Journal>,
    running: Option<Running>,
    next_epoch: u64,
    /// Writes journalled since the last checkpoint began, and when the first of them was.
    journalled: usize,
    since: Option<Instant>,
    /// After a failed checkpoint: the earliest next try.
    not_before: Option<Instant>,
}

impl Writer {
    pub fn new(shared: Shared, every: Checkpoints, active: Journal, spare: Journal, next_epoch: u64) -> Writer {
        Writer {
            shared,
            every,
            active,
            spare: Some(spare),
            failed: None,
            running: None,
            next_epoch,
            journalled: 0,
            since: None,
            not_before: None,
        }
    }

    fn epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch - 1
    }

    /// When the writer thread must look again without being woken: a checkpoint is due, or one
    /// running may have finished.
    fn due_at(&self) -> Option<Instant> {
        match self.running {
            Some(_) => Some(Instant::now() + RUNNING_POLL),
            None => self.since.map(|t| (t + self.every.every).max(self.not_before.unwrap_or(t))),
        }
    }

    /// Journals what is queued, answering its callers as soon as it is durable; then collects a
    /// finished checkpoint, answers flushes (after a checkpoint of everything) and starts a
    /// checkpoint when due. Run by the writer thread, or by a thread committing what it staged.
    /// A checkpoint that fails leaves the writes where they were (journal and memory, in order)
    /// and is tried again an interval later; should checkpoints keep failing, writes are refused
    /// before what is kept in memory grows past ten checkpoints' worth.
    fn step(&mut self, queue: &Queue) {
        // Taken while this writer is held, so batches are journalled in the order they were queued
        // whichever thread journals them.
        let batches = queue.take();
        // An empty batch is a flush: it is answered after a checkpoint.
        let (flushes, batches): (Vec<_>, Vec<_>) = batches.into_iter().partition(|(w, _)| w.is_empty());
        if !batches.is_empty() {
            self.journal(batches);
        }
        if self.running.as_ref().is_some_and(JoinHandle::is_finished) {
            self.collect();
        }
        if !flushes.is_empty() {
            let result = self.checkpoint_now();
            for (_, waiter) in flushes {
                let _ = waiter.send(result.clone());
            }
            return;
        }
        let now = Instant::now();
        let due = self.since.is_some_and(|t| now >= t + self.every.every || self.journalled >= self.every.writes)
            && self.not_before.is_none_or(|t| now >= t);
        if due {
            if self.failed.is_some() {
                let _ = self.checkpoint_now();
            } else if self.running.is_none() {
                self.start_checkpoint();
            }
        }
    }

    fn journal(&mut self, batches: Vec<Batch>) {
        let result = if self.journalled >= self.every.writes.saturating_mul(10) {
            Err(anyhow::anyhow!("the store cannot checkpoint (see the errors logged): refusing writes"))
        } else {
            self.active.append(batches.iter().map(|(w, _)| w.as_slice()))
        };
        let result = result.map_err(|e| format!("{e:#}"));
        let (writes, waiters): (Vec<_>, Vec<_>) = batches.into_iter().unzip();
        if result.is_ok() {
            self.journalled += writes.iter().map(Vec::len).sum::<usize>();
            self.shared.unapplied().extend(writes.into_iter().flatten());
            self.since.get_or_insert_with(Instant::now);
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }

    /// Makes the spare file the journal and checkpoints what the former one holds on a thread of
    /// its own.
    fn start_checkpoint(&mut self) {
        let Some(mut spare) = self.spare.take() else { return };
        let epoch = self.epoch();
        if let Err(e) = spare.restart(epoch) {
            tracing::error!(error = %format!("{e:#}"), "store checkpoint not started");
            self.spare = Some(spare);
            self.not_before = Some(Instant::now() + self.every.every);
            return;
        }
        let mut former = std::mem::replace(&mut self.active, spare);
        let (shared, emptied) = (self.shared.clone(), self.epoch());
        #[cfg(test)]
        let gate = self.every.gate.clone();
        let run = move || {
            #[cfg(test)]
            if let Some(gate) = gate {
                let _ = gate.lock().expect("gate").recv();
            }
            let result = shared.checkpoint().and_then(|()| former.restart(emptied).map_err(|e| (0, format!("{e:#}"))));
            (former, result)
        };
        match std::thread::Builder::new().name("store-checkpoint".into()).spawn(run) {
            Ok(handle) => {
                self.running = Some(handle);
                (self.journalled, self.since) = (0, None);
            }
            Err(e) => tracing::error!(error = %e, "store checkpoint thread not started"),
        }
    }

    /// Takes back the former journal from a background checkpoint, once it has finished.
    fn collect(&mut self) {
        let Some(handle) = self.running.take() else { return };
        let (former, result) = handle.join().expect("the checkpoint thread does not panic");
        match result {
            Ok(()) => (self.spare, self.not_before) = (Some(former), None),
            Err((put_back, _)) => {
                self.failed = Some(former);
                self.journalled += put_back;
                self.since.get_or_insert_with(Instant::now);
                self.not_before = Some(Instant::now() + self.every.every);
            }
        }
    }

    /// A checkpoint of everything, here and now (a flush, the end, or a try after one failed):
    /// both files are emptied once redb holds what they hold.
    fn checkpoint_now(&mut self) -> Result<(), String> {
        self.collect(); // waits for one running
        let result = self.shared.checkpoint().map_err(|(_, e)| e).and_then(|()| {
            let epoch = self.epoch();
            self.active.restart(epoch).map_err(|e| format!("{e:#}"))?;
            if let Some(mut former) = self.failed.take() {
                let epoch = self.epoch();
                if let Err(e) = former.restart(epoch) {
                    self.failed = Some(former);
                    return Err(format!("{e:#}"));
                }
                self.spare = Some(former);
            }
            Ok(())
        });
        match &result {
            Ok(()) => (self.journalled, self.since, self.not_before) = (0, None, None),
            Err(_) => self.not_before = Some(Instant::now() + self.every.every),
        }
        result
    }
}
