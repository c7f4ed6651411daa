//! Durable state on the data volume: registrations, publications, subscriptions, presence rules,
//! contact lists and messages kept for offline users, each a table of JSON values in one redb
//! file (`<data_dir>/parley.redb`).
//!
//! redb commits are crash-safe (copy-on-write B-trees, fsync on commit), so a write the server has
//! awaited before answering a client survives `kill -9`. redb keeps no separate journal: the file
//! is the whole state. Writes go to one writer thread that commits everything queued since its
//! last commit in a single transaction (group commit): under load many requests share one fsync,
//! and each caller still gets its answer only once its writes are durable.

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;

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
#[derive(Debug)]
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

type Batch = (Vec<Write>, tokio::sync::oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
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
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
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
        let db = Arc::new(db);
        let (writer, queue) = std::sync::mpsc::channel::<Batch>();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new().name("store-writer".into()).spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut batches = vec![first];
                batches.extend(queue.try_iter());
                let (writes, waiters): (Vec<_>, Vec<_>) = batches.into_iter().unzip();
                let result = Self::apply_now(&writer_db, writes.into_iter().flatten()).map_err(|e| format!("{e:#}"));
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        })?;
        Ok(Store { inner: Arc::new(Inner { db, writer: Some(writer), thread: Some(thread) }) })
    }

    /// Applies writes in one durable transaction; returns once they are on disk.
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

    fn apply_now(db: &Database, writes: impl Iterator<Item = Write>) -> anyhow::Result<()> {
        let txn = db.begin_write()?;
        for w in writes {
            let mut table = txn.open_table(w.table.def())?;
            match &w.value {
                Some(v) => {
                    table.insert(w.key.as_str(), v.as_slice())?;
                }
                None => {
                    table.remove(w.key.as_str())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Returns once everything queued before it is on disk.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let writer = self.inner.writer.as_ref().expect("writer lives as long as the store");
        writer.send((Vec::new(), tx)).map_err(|_| anyhow::anyhow!("the store writer has stopped"))?;
        rx.await.map_err(|_| anyhow::anyhow!("the store writer has stopped"))?.map_err(|e| anyhow::anyhow!(e))
    }

    /// One value, if stored.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> anyhow::Result<Option<T>> {
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
        let store = Store::open(dir.path()).unwrap();
        store
            .apply(vec![
                Write::put(Table::Rules, "alice@x", &vec!["bob@x"]),
                Write::put(Table::Rules, "bob@x", &vec!["c"]),
            ])
            .await
            .unwrap();
        store.apply(vec![Write::delete(Table::Rules, "bob@x")]).await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let rules: Vec<(String, Vec<String>)> = store.load(Table::Rules).unwrap();
        assert_eq!(rules, vec![("alice@x".to_string(), vec!["bob@x".to_string()])]);
    }

    #[tokio::test]
    async fn a_users_state_is_exported_and_imported_over_every_per_user_table() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (Store::open(a.path()).unwrap(), Store::open(b.path()).unwrap());
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
