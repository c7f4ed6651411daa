//! Durable state on the data volume: registrations, publications, subscriptions, presence rules,
//! contact lists and messages kept for offline users, each a table of JSON values in one redb
//! file (`<data_dir>/parley.redb`).
//!
//! Writes go to one writer thread. It takes everything queued since it last ran (group commit),
//! appends it to the journal (`journal`: one checksummed frame per caller's batch, one
//! `fdatasync` for all), keeps it in memory as not yet in redb, and answers the callers: a write
//! the server has awaited before answering a client survives `kill -9` and power loss (with
//! `storage.sync = "checkpoint"`, the journal is synced only at checkpoints: `kill -9` still loses
//! nothing, power loss the changes since the last checkpoint). redb takes
//! the kept writes in one transaction at the next checkpoint (every `CHECKPOINT_EVERY` or
//! `CHECKPOINT_WRITES` writes, and on `flush`), a durable commit after which the journal is
//! emptied; a read first gives redb whatever is kept (reads are rare: at start and when a user
//! moves), so every read sees every acknowledged write. A redb commit that syncs costs several
//! page writes and syncs of the B-trees: made for every batch it was a third of a REGISTER's CPU
//! and most of its latency; a commit that does not sync, for every batch, still a tenth of its
//! CPU. At start, whatever the journal still holds is replayed into redb.

mod journal;

use anyhow::Context;
pub use parley_config::SyncPolicy;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

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
/// How long journalled writes wait at most for the durable redb commit that lets the journal be
/// emptied: a checkpoint holds the writer for a sync of what changed since the last one (a few
/// milliseconds), so it runs seldom enough that few requests meet one (fewer than 1 in 100 at
/// 1,000 REGISTERs a second), and the journal replayed at start stays small.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// A checkpoint also runs once this many writes are journalled, whatever the time.
const CHECKPOINT_WRITES: usize = 20_000;

/// When the writer checkpoints (tests wait longer, to look at a journal before it empties).
#[derive(Clone, Copy)]
struct Checkpoints {
    every: Duration,
    writes: usize,
}

type Batch = (Vec<Write>, tokio::sync::oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// Journalled (acknowledged) writes redb has not taken yet, in order.
    unapplied: Arc<std::sync::Mutex<Vec<Write>>>,
    writer: Option<std::sync::mpsc::Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    /// Lets the writer finish what is queued and release the database file.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    pub fn open(data_dir: &Path, sync: SyncPolicy) -> anyhow::Result<Store> {
        Self::open_with(data_dir, sync, Checkpoints { every: CHECKPOINT_EVERY, writes: CHECKPOINT_WRITES })
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
        // What the last run journalled but never checkpointed (it stopped abruptly).
        let journal_path = data_dir.join("parley.journal");
        let replay = journal::read(&journal_path)?;
        if !replay.is_empty() {
            tracing::info!(batches = replay.len(), "replaying the store's journal");
            Self::apply_now(&db, &replay.into_iter().flatten().collect::<Vec<_>>(), Durability::Immediate)?;
        }
        let journal = journal::Journal::create(&journal_path, sync == SyncPolicy::EachChange)?;
        let db = Arc::new(db);
        let (writer, queue) = std::sync::mpsc::channel::<Batch>();
        let (writer_db, unapplied) = (db.clone(), Arc::new(std::sync::Mutex::new(Vec::new())));
        let writer_unapplied = unapplied.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || Self::write_loop(&writer_db, &writer_unapplied, journal, &queue, checkpoints))?;
        Ok(Store { inner: Arc::new(Inner { db, unapplied, writer: Some(writer), thread: Some(thread) }) })
    }

    /// The writer thread: journal, keep, answer; checkpoint when due; a last checkpoint when the
    /// store is dropped. Callers are answered as soon as their writes are durable in the journal.
    /// A checkpoint that fails leaves the writes where they were (journal and memory, in order)
    /// and is tried again an interval later; should checkpoints keep failing, writes are refused
    /// before what is kept in memory grows past ten checkpoints' worth.
    fn write_loop(
        db: &Database,
        unapplied: &std::sync::Mutex<Vec<Write>>,
        mut journal: journal::Journal,
        queue: &Receiver<Batch>,
        every: Checkpoints,
    ) {
        // Writes journalled since the last checkpoint, and when the first of them was.
        let mut journalled = 0;
        let mut since: Option<Instant> = None;
        // After a failed checkpoint: the earliest next try.
        let mut not_before: Option<Instant> = None;
        loop {
            let due_at = since.map(|t| (t + every.every).max(not_before.unwrap_or(t)));
            let first = match due_at {
                None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => queue.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            let batches = match first {
                Ok(first) => std::iter::once(first).chain(queue.try_iter()).collect(),
                Err(RecvTimeoutError::Timeout) => Vec::new(),
                Err(RecvTimeoutError::Disconnected) => {
                    if journalled > 0 {
                        let _ = Self::checkpoint(db, unapplied, &mut journal);
                    }
                    return;
                }
            };
            // An empty batch is a flush: it is answered after a checkpoint.
            let (flushes, batches): (Vec<_>, Vec<_>) = batches.into_iter().partition(|(w, _)| w.is_empty());
            if !batches.is_empty() {
                let result = if journalled >= every.writes.saturating_mul(10) {
                    Err(anyhow::anyhow!("the store cannot checkpoint (see the errors logged): refusing writes"))
                } else {
                    journal.append(batches.iter().map(|(w, _)| w.as_slice()))
                };
                let result = result.map_err(|e| format!("{e:#}"));
                let (writes, waiters): (Vec<_>, Vec<_>) = batches.into_iter().unzip();
                if result.is_ok() {
                    journalled += writes.iter().map(Vec::len).sum::<usize>();
                    unapplied.lock().unwrap_or_else(|p| p.into_inner()).extend(writes.into_iter().flatten());
                    since.get_or_insert_with(Instant::now);
                }
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
            let now = Instant::now();
            let due = since.is_some_and(|t| now >= t + every.every || journalled >= every.writes)
                && not_before.is_none_or(|t| now >= t);
            if !flushes.is_empty() || due {
                let result = Self::checkpoint(db, unapplied, &mut journal);
                match result {
                    Ok(()) => (journalled, since, not_before) = (0, None, None),
                    Err(_) => not_before = Some(now + every.every),
                }
                for (_, waiter) in flushes {
                    let _ = waiter.send(result.clone());
                }
            }
        }
    }

    /// Gives redb the kept writes in a durable commit, then empties the journal.
    fn checkpoint(
        db: &Database,
        unapplied: &std::sync::Mutex<Vec<Write>>,
        journal: &mut journal::Journal,
    ) -> Result<(), String> {
        let started = Instant::now();
        let result = Self::catch_up(db, unapplied, Durability::Immediate).and_then(|writes| {
            journal.clear()?;
            Ok(writes)
        });
        match result {
            Ok(writes) => {
                tracing::debug!(writes, took = ?started.elapsed(), "store checkpoint");
                Ok(())
            }
            Err(e) => {
                let e = format!("{e:#}");
                tracing::error!(error = %e, "store checkpoint failed: the journal keeps the writes");
                Err(e)
            }
        }
    }

    /// Gives redb the kept writes, all in one transaction, and says how many. A durable commit
    /// also makes every earlier commit that did not sync durable, so it runs even with none kept.
    fn catch_up(
        db: &Database,
        unapplied: &std::sync::Mutex<Vec<Write>>,
        durability: Durability,
    ) -> anyhow::Result<usize> {
        let mut kept = unapplied.lock().unwrap_or_else(|p| p.into_inner());
        if kept.is_empty() && matches!(durability, Durability::None) {
            return Ok(0);
        }
        Self::apply_now(db, &kept, durability)?;
        let writes = kept.len();
        kept.clear();
        Ok(writes)
    }

    /// Before a read: redb takes what is kept, so the read sees every acknowledged write.
    fn caught_up(&self) -> anyhow::Result<()> {
        Self::catch_up(&self.inner.db, &self.inner.unapplied, Durability::None).map(|_| ())
    }

    /// Applies writes; returns once they are durable.
    pub async fn apply(&self, writes: Vec<Write>) -> anyhow::Result<()> {
        self.submit(writes).await
    }

    /// Queues writes at once (so calls commit in the order they are made); the future resolves
    /// when they are on disk.
    pub fn submit(&self, writes: Vec<Write>) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        let stopped = || anyhow::anyhow!("the store writer has stopped");
        let queued = (!writes.is_empty()).then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let writer = self.inner.writer.as_ref().expect("writer lives as long as the store");
            writer.send((writes, tx)).map(|()| rx)
        });
        async move {
            match queued {
                None => Ok(()),
                Some(Err(_)) => Err(stopped()),
                Some(Ok(rx)) => rx.await.map_err(|_| stopped())?.map_err(|e| anyhow::anyhow!(e)),
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
        let writer = self.inner.writer.as_ref().expect("writer lives as long as the store");
        writer.send((Vec::new(), tx)).map_err(|_| anyhow::anyhow!("the store writer has stopped"))?;
        rx.await.map_err(|_| anyhow::anyhow!("the store writer has stopped"))?.map_err(|e| anyhow::anyhow!(e))
    }

    /// One value, if stored.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> anyhow::Result<Option<T>> {
        self.caught_up()?;
        let txn = self.inner.db.begin_read()?;
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
            let txn = self.inner.db.begin_read()?;
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
        let txn = self.inner.db.begin_read()?;
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
        let hour = Checkpoints { every: Duration::from_secs(3600), writes: usize::MAX };
        let store = Store::open_with(dir.path(), sync, hour).unwrap();
        store
            .apply(vec![Write::put(Table::Rules, "alice@x", &1), Write::put(Table::Rules, "bob@x", &2)])
            .await
            .unwrap();
        store.apply(vec![Write::delete(Table::Rules, "bob@x"), Write::put(Table::Contacts, "c@x", &3)]).await.unwrap();
        assert_eq!(store.get::<u32>(Table::Rules, "alice@x").unwrap(), Some(1), "reads see journalled writes");
        let journalled = journal::read(&dir.path().join("parley.journal")).unwrap();
        assert_eq!(journalled.len(), 2, "the writes are in the journal, not yet checkpointed");
        let crashed = tempfile::tempdir().unwrap();
        for name in ["parley.redb", "parley.journal"] {
            std::fs::copy(dir.path().join(name), crashed.path().join(name)).unwrap();
        }
        let reopened = Store::open(crashed.path(), sync).unwrap();
        let rules: Vec<(String, u32)> = reopened.load(Table::Rules).unwrap();
        assert_eq!(rules, vec![("alice@x".to_string(), 1)]);
        assert_eq!(reopened.get::<u32>(Table::Contacts, "c@x").unwrap(), Some(3));
        assert!(journal::read(&crashed.path().join("parley.journal")).unwrap().is_empty(), "replayed, then emptied");
        // A flush checkpoints: redb holds everything and the journal is empty.
        store.flush().await.unwrap();
        assert!(journal::read(&dir.path().join("parley.journal")).unwrap().is_empty());
        assert_eq!(store.get::<u32>(Table::Contacts, "c@x").unwrap(), Some(3));
    }

    /// A checkpoint must put what it takes out of the journal into redb durably: after a flush,
    /// redb's file alone (no journal beside it) holds every acknowledged write.
    #[tokio::test]
    async fn after_a_checkpoint_redb_alone_holds_every_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Checkpoints { every: Duration::from_secs(3600), writes: usize::MAX };
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
