//! Durable state on the data volume: registrations, publications, subscriptions, presence rules,
//! contact lists and messages kept for offline users, each a table of JSON values in one redb
//! file (`<data_dir>/parley.redb`).
//!
//! Writes go to one writer (`writer`), run by a thread of its own or, for writes staged by the
//! UDP reader, by that thread after a burst of datagrams (no thread woken for it). It takes
//! everything queued since it last ran (group commit), appends it to the journal (`journal`: one
//! checksummed frame per caller's batch, one `fdatasync` for all), keeps it in memory as not yet
//! in redb, and answers the callers: a write the server has awaited before answering a client survives `kill -9` and
//! power loss (with `storage.sync = "checkpoint"`, the journal is synced only at checkpoints:
//! `kill -9` still loses nothing, power loss the changes since the last checkpoint). redb takes
//! the kept writes in one transaction at the next checkpoint (every `CHECKPOINT_EVERY` or
//! `CHECKPOINT_WRITES` writes, in the background, and on `flush`), a durable commit after which
//! the journal it covers is emptied; a read first gives redb whatever is kept (reads are rare: at
//! start and when a user moves), so every read sees every acknowledged write. A redb commit that
//! syncs costs several page writes and syncs of the B-trees: made for every batch it was a third
//! of a REGISTER's CPU and most of its latency; a commit that does not sync, for every batch,
//! still a tenth of its CPU. At start, whatever the journals still hold is replayed into redb.

mod journal;
mod writer;

use crate::ops::metrics::Histogram;
use anyhow::Context;
pub use parley_config::SyncPolicy;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Registrations,
    Publications,
    Subscriptions,
    Rules,
    Contacts,
    /// Messages kept for users with no device, keyed `<address of record>\0<sequence>`: several
    /// per user, in order (see [`Table::PER_USER_MANY`]).
    Offline,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 6] = [
        Table::Registrations,
        Table::Publications,
        Table::Subscriptions,
        Table::Rules,
        Table::Contacts,
        Table::Offline,
    ];

    /// The tables whose key is a user's address of record: what a user's durable state is, and
    /// what `user move` carries to another Home Server (`export_user`, `import_user`). A table
    /// added here travels with its user without any change to the move.
    pub const PER_USER: [Table; 4] = [Table::Registrations, Table::Publications, Table::Rules, Table::Contacts];

    /// The tables holding several entries per user, keyed `<address of record>\0<suffix>`: a
    /// user's state holds them as an object by suffix, and they travel with the user too.
    pub const PER_USER_MANY: [Table; 1] = [Table::Offline];

    pub fn name(self) -> &'static str {
        match self {
            Table::Registrations => "registrations",
            Table::Publications => "publications",
            Table::Subscriptions => "subscriptions",
            Table::Rules => "rules",
            Table::Contacts => "contacts",
            Table::Offline => "offline_messages",
        }
    }

    pub fn by_name(name: &str) -> Option<Table> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// A user's durable state: the value of each per-user table that holds one, by table name, as
/// stored (JSON).
pub type UserState = std::collections::BTreeMap<String, serde_json::Value>;

/// One change: a value to store under a key, or `None` to delete it.
#[derive(Debug, PartialEq, Eq)]
pub struct Write {
    pub table: Table,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

impl Write {
    pub fn put<T: Serialize>(table: Table, key: impl Into<String>, value: &T) -> Write {
        Write { table, key: key.into(), value: Some(serde_json::to_vec(value).expect("state serialises")) }
    }

    pub fn delete(table: Table, key: impl Into<String>) -> Write {
        Write { table, key: key.into(), value: None }
    }
}

const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// How long journalled writes wait at most for the durable redb commit that lets their journal be
/// emptied: often enough that the journal replayed at start stays small, seldom enough that the
/// commit's fixed cost (syncs of redb's pages) is shared by many writes.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// A checkpoint also runs once this many writes are journalled, whatever the time.
const CHECKPOINT_WRITES: usize = 20_000;
/// The journal files, taking turns (the first is also where the earlier, single journal was).
const JOURNALS: [&str; 2] = ["parley.journal", "parley.journal.1"];

use writer::Checkpoints;

fn stopped() -> anyhow::Error {
    anyhow::anyhow!("the store writer has stopped")
}

type Batch = (Vec<Write>, tokio::sync::oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: writer::Shared,
    committer: Arc<writer::Committer>,
    thread: Option<std::thread::JoinHandle<()>>,
    syncs: Arc<Histogram>,
}

impl Drop for Inner {
    /// Lets the writer finish what is queued and release the database file.
    fn drop(&mut self) {
        self.committer.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    pub fn open(data_dir: &Path, sync: SyncPolicy) -> anyhow::Result<Store> {
        Self::open_with(data_dir, sync, Checkpoints::new(CHECKPOINT_EVERY, CHECKPOINT_WRITES))
    }

    fn open_with(data_dir: &Path, sync: SyncPolicy, checkpoints: Checkpoints) -> anyhow::Result<Store> {
        let path = data_dir.join("parley.redb");
        // redb caches up to 1 GiB by default; the in-memory state is the server's working set,
        // so the store's cache only needs to cover recent writes.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .with_context(|| format!("opening the store {}", path.display()))?;
        let txn = db.begin_write()?;
        for t in Table::ALL {
            txn.open_table(t.def())?;
        }
        txn.commit()?;
        // What the last run journalled but never checkpointed (it stopped abruptly, maybe in the
        // middle of a checkpoint: then both journals hold writes, the older epoch's first).
        let mut journals =
            JOURNALS.iter().map(|name| journal::read(&data_dir.join(name))).collect::<anyhow::Result<Vec<_>>>()?;
        journals.sort_by_key(|(epoch, _)| *epoch);
        let next_epoch = journals.last().map_or(0, |(epoch, _)| *epoch) + 1;
        let replay: Vec<Write> = journals.into_iter().flat_map(|(_, batches)| batches).flatten().collect();
        if !replay.is_empty() {
            tracing::info!(writes = replay.len(), "replaying the store's journal");
            Self::apply_now(&db, &replay, Durability::Immediate)?;
        }
        tracing::info!(path = %path.display(), ?sync, "store open");
        let syncs = Arc::new(Histogram::default());
        let timed = (sync == SyncPolicy::EachChange).then_some(&syncs);
        let active = journal::Journal::create(&data_dir.join(JOURNALS[0]), timed.cloned(), next_epoch)?;
        let spare = journal::Journal::create(&data_dir.join(JOURNALS[1]), timed.cloned(), next_epoch + 1)?;
        let shared = writer::Shared { db: Arc::new(db), unapplied: Arc::default(), committing: Arc::default() };
        let writer = writer::Writer::new(shared.clone(), checkpoints, active, spare, next_epoch + 2);
        let committer = Arc::new(writer::Committer::new(writer));
        let running = committer.clone();
        let thread = std::thread::Builder::new().name("store-writer".into()).spawn(move || running.run())?;
        Ok(Store { inner: Arc::new(Inner { shared, committer, thread: Some(thread), syncs }) })
    }

    /// The time each sync of the journal took (none with `storage.sync = "checkpoint"`), for
    /// `/metrics`: a disk whose syncs slow down delays every durable answer.
    pub fn journal_syncs(&self) -> Arc<Histogram> {
        self.inner.syncs.clone()
    }

    /// Before a read: redb takes what is kept (after any checkpoint in flight), so the read sees
    /// every acknowledged write.
    fn caught_up(&self) -> anyhow::Result<()> {
        let shared = &self.inner.shared;
        let _committing = shared.committing();
        let mut kept = shared.unapplied();
        if !kept.is_empty() {
            Self::apply_now(&shared.db, &kept, Durability::None)?;
            kept.clear();
        }
        Ok(())
    }

    /// Applies writes; returns once they are durable.
    pub async fn apply(&self, writes: Vec<Write>) -> anyhow::Result<()> {
        self.submit(writes).await
    }

    /// Queues writes at once (so calls commit in the order they are made) for the writer thread;
    /// the future resolves when they are on disk.
    pub fn submit(&self, writes: Vec<Write>) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        self.queue(writes, true)
    }

    /// Queues writes like `submit`, without waking the writer thread: the caller makes them
    /// durable itself with `commit_staged` (a thread handling a burst of requests stages their
    /// writes, then commits them together), unless another commit takes them first.
    pub fn stage(&self, writes: Vec<Write>) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        self.queue(writes, false)
    }

    /// Journals (and syncs, per the policy) every write queued so far, on the calling thread;
    /// the futures of staged writes are then ready.
    pub fn commit_staged(&self) {
        self.inner.committer.commit_staged();
    }

    fn queue(&self, writes: Vec<Write>, wake: bool) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        let rx = (!writes.is_empty()).then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.inner.committer.queue((writes, tx), wake);
            rx
        });
        async move {
            match rx {
                None => Ok(()),
                Some(rx) => rx.await.map_err(|_| stopped())?.map_err(|e| anyhow::anyhow!(e)),
            }
        }
    }

    /// Writes in one transaction, each table opened once (writes to one key keep their order).
    fn apply_now(db: &Database, writes: &[Write], durability: Durability) -> anyhow::Result<()> {
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        for t in Table::ALL {
            let mut ours = writes.iter().filter(|w| w.table == t).peekable();
            if ours.peek().is_none() {
                continue;
            }
            let mut table = txn.open_table(t.def())?;
            for w in ours {
                match &w.value {
                    Some(v) => table.insert(w.key.as_str(), v.as_slice())?,
                    None => table.remove(w.key.as_str())?,
                };
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Returns once everything queued before it is durable, and in redb (checkpointed).
    pub async fn flush(&self) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.committer.queue((Vec::new(), tx), true);
        rx.await.map_err(|_| stopped())?.map_err(|e| anyhow::anyhow!(e))
    }

    /// One value, if stored.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> anyhow::Result<Option<T>> {
        self.caught_up()?;
        let txn = self.inner.shared.db.begin_read()?;
        let t = txn.open_table(table.def())?;
        match t.get(key)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    /// A user's durable state: every per-user table's value under the user's address, and the
    /// user's entries of the tables holding several (an object by key suffix).
    pub fn export_user(&self, aor: &str) -> anyhow::Result<UserState> {
        let mut state = UserState::new();
        for table in Table::PER_USER {
            if let Some(v) = self.get::<serde_json::Value>(table, aor)? {
                state.insert(table.name().to_string(), v);
            }
        }
        let prefix = format!("{aor}\u{0}");
        for table in Table::PER_USER_MANY {
            self.caught_up()?;
            let txn = self.inner.shared.db.begin_read()?;
            let t = txn.open_table(table.def())?;
            let mut entries = serde_json::Map::new();
            for entry in t.range(prefix.as_str()..)? {
                let (k, v) = entry?;
                let Some(suffix) = k.value().strip_prefix(&prefix) else { break };
                entries.insert(suffix.to_string(), serde_json::from_slice(v.value())?);
            }
            if !entries.is_empty() {
                state.insert(table.name().to_string(), serde_json::Value::Object(entries));
            }
        }
        Ok(state)
    }

    /// The writes that make `state` the user's durable state (tables it leaves out are cleared;
    /// entries of a table holding several are added). A table this version does not keep per
    /// user is refused, rather than dropped.
    pub fn import_writes(aor: &str, state: &UserState) -> anyhow::Result<Vec<Write>> {
        let per_user = |t: Table| Table::PER_USER.contains(&t) || Table::PER_USER_MANY.contains(&t);
        for name in state.keys() {
            if !Table::by_name(name).is_some_and(per_user) {
                anyhow::bail!("unknown per-user table {name:?} (a newer server's state?)");
            }
        }
        let mut writes: Vec<Write> = Table::PER_USER
            .into_iter()
            .map(|t| match state.get(t.name()) {
                Some(v) => Write::put(t, aor, v),
                None => Write::delete(t, aor),
            })
            .collect();
        for t in Table::PER_USER_MANY {
            let Some(entries) = state.get(t.name()) else { continue };
            let entries = entries.as_object().ok_or_else(|| anyhow::anyhow!("{}: not an object", t.name()))?;
            writes.extend(entries.iter().map(|(suffix, v)| Write::put(t, format!("{aor}\u{0}{suffix}"), v)));
        }
        Ok(writes)
    }

    /// The writes that delete a user's durable state kept under their address (entries of the
    /// tables holding several are deleted by whoever keeps them: the core knows their keys).
    pub fn delete_user_writes(aor: &str) -> Vec<Write> {
        Table::PER_USER.into_iter().map(|t| Write::delete(t, aor)).collect()
    }

    /// Every value of a table; entries that no longer parse are skipped with a warning.
    pub fn load<T: DeserializeOwned>(&self, table: Table) -> anyhow::Result<Vec<(String, T)>> {
        self.caught_up()?;
        let txn = self.inner.shared.db.begin_read()?;
        let t = txn.open_table(table.def())?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            match serde_json::from_slice(v.value()) {
                Ok(value) => out.push((k.value().to_string(), value)),
                Err(e) => tracing::warn!(table = ?table, key = k.value(), error = %e, "skipping unreadable entry"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), SyncPolicy::EachChange).unwrap();
        store
            .apply(vec![
                Write::put(Table::Rules, "alice@x", &vec!["bob@x"]),
                Write::put(Table::Rules, "bob@x", &vec!["c"]),
            ])
            .await
            .unwrap();
        store.apply(vec![Write::delete(Table::Rules, "bob@x")]).await.unwrap();
        drop(store);
        let store = Store::open(dir.path(), SyncPolicy::EachChange).unwrap();
        let rules: Vec<(String, Vec<String>)> = store.load(Table::Rules).unwrap();
        assert_eq!(rules, vec![("alice@x".to_string(), vec!["bob@x".to_string()])]);
    }

    /// What `kill -9` leaves: the data directory as it is on disk while the store runs, the
    /// acknowledged writes still in the journal only, under either sync policy (the page cache
    /// outlives the process; only the sync differs).
    #[tokio::test]
    async fn acknowledged_writes_survive_a_crash_before_any_checkpoint() {
        for sync in [SyncPolicy::EachChange, SyncPolicy::Checkpoint] {
            survive_a_crash(sync).await;
        }
    }

    async fn survive_a_crash(sync: SyncPolicy) {
        let dir = tempfile::tempdir().unwrap();
        let hour = Checkpoints::new(Duration::from_secs(3600), usize::MAX);
        let store = Store::open_with(dir.path(), sync, hour).unwrap();
        store
            .apply(vec![Write::put(Table::Rules, "alice@x", &1), Write::put(Table::Rules, "bob@x", &2)])
            .await
            .unwrap();
        store.apply(vec![Write::delete(Table::Rules, "bob@x"), Write::put(Table::Contacts, "c@x", &3)]).await.unwrap();
        // Each write answered after its own sync, timed; none without a sync per change.
        let syncs = if sync == SyncPolicy::EachChange { 2 } else { 0 };
        assert_eq!(store.journal_syncs().count(), syncs, "{sync:?}");
        assert_eq!(store.get::<u32>(Table::Rules, "alice@x").unwrap(), Some(1), "reads see journalled writes");
        let journalled = journal::read(&dir.path().join("parley.journal")).unwrap().1;
        assert_eq!(journalled.len(), 2, "the writes are in the journal, not yet checkpointed");
        let crashed = tempfile::tempdir().unwrap();
        for name in ["parley.redb", JOURNALS[0], JOURNALS[1]] {
            std::fs::copy(dir.path().join(name), crashed.path().join(name)).unwrap();
        }
        let reopened = Store::open(crashed.path(), sync).unwrap();
        let rules: Vec<(String, u32)> = reopened.load(Table::Rules).unwrap();
        assert_eq!(rules, vec![("alice@x".to_string(), 1)]);
        assert_eq!(reopened.get::<u32>(Table::Contacts, "c@x").unwrap(), Some(3));
        assert!(journal::read(&crashed.path().join("parley.journal")).unwrap().1.is_empty(), "replayed, then emptied");
        // A flush checkpoints: redb holds everything and the journal is empty.
        store.flush().await.unwrap();
        assert!(journal::read(&dir.path().join("parley.journal")).unwrap().1.is_empty());
        assert_eq!(store.get::<u32>(Table::Contacts, "c@x").unwrap(), Some(3));
    }

    /// A checkpoint runs beside the writer: a write made while one commits is answered at once,
    /// and a crash in the middle of one (both journals holding writes, the older in either file)
    /// loses nothing and replays them in order.
    #[tokio::test]
    async fn writes_go_on_during_a_checkpoint_and_a_crash_in_one_replays_both_journals_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (gate_tx, gate) = std::sync::mpsc::channel();
        let mut every = Checkpoints::new(Duration::from_secs(3600), 1); // one after every write
        every.gate = Some(Arc::new(std::sync::Mutex::new(gate)));
        let store = Store::open_with(dir.path(), SyncPolicy::EachChange, every).unwrap();
        let open_gate = gate_tx; // declared after the store: should a check fail, dropped first
        let k = |v: u32| vec![Write::put(Table::Rules, "k", &v)];
        let answered = |w| tokio::time::timeout(Duration::from_secs(10), store.apply(w));
        let epoch = |n: usize| journal::read(&dir.path().join(JOURNALS[n])).unwrap().0;
        let wait_for_epoch = |n: usize, want: u64| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while epoch(n) != want {
                assert!(std::time::Instant::now() < deadline, "journal {n}: epoch {} not {want}", epoch(n));
                std::thread::yield_now();
            }
        };
        let after_a_crash = || {
            let crashed = tempfile::tempdir().unwrap();
            for name in ["parley.redb", JOURNALS[0], JOURNALS[1]] {
                std::fs::copy(dir.path().join(name), crashed.path().join(name)).unwrap();
            }
            let reopened = Store::open(crashed.path(), SyncPolicy::EachChange).unwrap();
            reopened.get::<u32>(Table::Rules, "k").unwrap()
        };
        // Epochs: journal 0 starts at 1, journal 1 at 2; each checkpoint gives the next one to
        // the file that becomes the journal, then the one after to the file it empties.
        answered(k(1)).await.expect("answered").unwrap(); // journal 0; checkpoint 1 takes journal 1 (epoch 3)
        answered(k(2)).await.expect("answered while checkpoint 1 waits to commit").unwrap();
        assert_eq!((epoch(0), epoch(1)), (1, 3));
        assert_eq!(after_a_crash(), Some(2));
        open_gate.send(()).unwrap(); // checkpoint 1 commits 1 and 2, empties journal 0 (epoch 4)
        // Checkpoint 2 (due: 2 is journalled since checkpoint 1 began) takes journal 0 (epoch 5),
        // the older writes now in journal 1, the second file.
        wait_for_epoch(0, 5);
        answered(k(3)).await.expect("answered while checkpoint 2 waits to commit").unwrap();
        assert_eq!(journal::read(&dir.path().join(JOURNALS[1])).unwrap().1.len(), 1, "2, still in journal 1");
        assert_eq!(after_a_crash(), Some(3), "journal 1 (older) replayed before journal 0");
        drop(open_gate);
        assert_eq!(store.get::<u32>(Table::Rules, "k").unwrap(), Some(3));
        drop(store);
        let reopened = Store::open(dir.path(), SyncPolicy::EachChange).unwrap();
        assert_eq!(reopened.get::<u32>(Table::Rules, "k").unwrap(), Some(3));
    }

    /// A thread committing what it staged journals it itself: its writes are answered when
    /// `commit_staged` returns and a crash then loses none of them. A write staged and left
    /// goes with the next commit, in its place: before a later one the writer thread commits.
    #[tokio::test]
    async fn staged_writes_are_journalled_by_the_thread_committing_them_in_order_with_the_rest() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let hour = Checkpoints::new(Duration::from_secs(3600), usize::MAX);
        let store = Store::open_with(dir.path(), SyncPolicy::EachChange, hour).unwrap();
        let k = |v: u32| vec![Write::put(Table::Rules, "k", &v)];
        let frames = || {
            let batches = journal::read(&dir.path().join(JOURNALS[0])).unwrap().1;
            batches
                .into_iter()
                .flatten()
                .map(|w| serde_json::from_slice(&w.value.unwrap()).unwrap())
                .collect::<Vec<u32>>()
        };
        store.inner.committer.until_the_writer_thread_sleeps(); // or it may take them
        let (one, two) = (store.stage(k(1)), store.stage(k(2)));
        assert!(frames().is_empty(), "staged writes wait for their commit");
        store.commit_staged();
        assert!(matches!(one.now_or_never(), Some(Ok(()))), "answered by the commit, on this thread");
        assert!(matches!(two.now_or_never(), Some(Ok(()))));
        assert_eq!(frames(), [1, 2]);
        let left = store.stage(k(3));
        store.apply(k(4)).await.unwrap();
        assert!(matches!(left.now_or_never(), Some(Ok(()))), "taken by the writer thread's commit");
        assert_eq!(frames(), [1, 2, 3, 4]);
        let crashed = tempfile::tempdir().unwrap();
        for name in ["parley.redb", JOURNALS[0], JOURNALS[1]] {
            std::fs::copy(dir.path().join(name), crashed.path().join(name)).unwrap();
        }
        assert_eq!(
            Store::open(crashed.path(), SyncPolicy::EachChange).unwrap().get::<u32>(Table::Rules, "k").unwrap(),
            Some(4)
        );
    }

    /// Writes only ever committed by the threads that staged them are still checkpointed when
    /// due: the writer thread, asleep with no deadline, hears of the first.
    #[tokio::test]
    async fn staged_writes_are_checkpointed_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let soon = Checkpoints::new(Duration::from_millis(20), usize::MAX);
        let store = Store::open_with(dir.path(), SyncPolicy::EachChange, soon).unwrap();
        store.flush().await.unwrap(); // nothing due
        store.inner.committer.until_the_writer_thread_sleeps();
        let written = store.stage(vec![Write::put(Table::Rules, "k", &1)]);
        store.commit_staged();
        written.await.unwrap();
        assert_eq!(journal::read(&dir.path().join(JOURNALS[0])).unwrap().1.len(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !journal::read(&dir.path().join(JOURNALS[0])).unwrap().1.is_empty() {
            assert!(std::time::Instant::now() < deadline, "no checkpoint emptied the journal");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join("parley.redb"), copy.path().join("parley.redb")).unwrap();
        let redb_alone = Store::open(copy.path(), SyncPolicy::EachChange).unwrap();
        assert_eq!(redb_alone.get::<u32>(Table::Rules, "k").unwrap(), Some(1), "the checkpoint put it in redb");
    }

    /// A checkpoint must put what it takes out of the journal into redb durably: after a flush,
    /// redb's file alone (no journal beside it) holds every acknowledged write.
    #[tokio::test]
    async fn after_a_checkpoint_redb_alone_holds_every_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Checkpoints::new(Duration::from_secs(3600), usize::MAX);
        let store = Store::open_with(dir.path(), SyncPolicy::EachChange, hour).unwrap();
        store
            .apply(vec![Write::put(Table::Rules, "alice@x", &1), Write::put(Table::Rules, "bob@x", &2)])
            .await
            .unwrap();
        store.apply(vec![Write::delete(Table::Rules, "bob@x"), Write::put(Table::Contacts, "c@x", &3)]).await.unwrap();
        store.flush().await.unwrap();
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join("parley.redb"), copy.path().join("parley.redb")).unwrap();
        let reopened = Store::open(copy.path(), SyncPolicy::EachChange).unwrap();
        let rules: Vec<(String, u32)> = reopened.load(Table::Rules).unwrap();
        assert_eq!(rules, vec![("alice@x".to_string(), 1)]);
        assert_eq!(reopened.get::<u32>(Table::Contacts, "c@x").unwrap(), Some(3));
    }

    #[tokio::test]
    async fn a_users_state_is_exported_and_imported_over_every_per_user_table() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (
            Store::open(a.path(), SyncPolicy::EachChange).unwrap(),
            Store::open(b.path(), SyncPolicy::EachChange).unwrap(),
        );
        let writes = Table::PER_USER.iter().map(|t| Write::put(*t, "alice@x", &vec![t.name()])).collect();
        from.apply(writes).await.unwrap();
        from.apply(vec![Write::put(Table::Rules, "bob@x", &1)]).await.unwrap();
        // Kept messages: several per user, under the user's prefix ("alice@x0" is someone else).
        let kept = ["alice@x\u{0}01", "alice@x\u{0}02", "alice@x0\u{0}01", "bob@x\u{0}01"];
        from.apply(kept.iter().map(|k| Write::put(Table::Offline, *k, k)).collect()).await.unwrap();
        let state = from.export_user("alice@x").unwrap();
        assert_eq!(state.len(), Table::PER_USER.len() + 1, "{state:?}");
        assert_eq!(state["offline_messages"], serde_json::json!({"01": kept[0], "02": kept[1]}));
        to.apply(vec![Write::put(Table::Contacts, "alice@x", &"stale")]).await.unwrap();
        to.apply(Store::import_writes("alice@x", &state).unwrap()).await.unwrap();
        assert_eq!(to.export_user("alice@x").unwrap(), state);
        from.apply(Store::delete_user_writes("alice@x")).await.unwrap();
        from.apply(kept[..2].iter().map(|k| Write::delete(Table::Offline, *k)).collect()).await.unwrap();
        from.flush().await.unwrap();
        assert!(from.export_user("alice@x").unwrap().is_empty());
        assert_eq!(from.get::<u32>(Table::Rules, "bob@x").unwrap(), Some(1), "other users keep theirs");
        let mut bad = state.clone();
        bad.insert("subscriptions".into(), serde_json::json!([]));
        assert!(Store::import_writes("alice@x", &bad).is_err(), "not a per-user table");
    }
}
