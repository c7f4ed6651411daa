//! Durable state on the data volume: registrations, publications, subscriptions, presence rules,
//! contact lists and messages kept for offline users, each a table of JSON values in one redb file (`<data_dir>/parley.redb`).
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
    /// Messages kept for users with no device, keyed `<address of record>\0<sequence>` (so a
    /// user's come first in order, and a per-user export by key prefix carries them).
    Offline,
}

impl Table {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Table::Registrations => "registrations",
            Table::Publications => "publications",
            Table::Subscriptions => "subscriptions",
            Table::Rules => "rules",
            Table::Contacts => "contacts",
            Table::Offline => "offline_messages",
        })
    }
}

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
        for t in [
            Table::Registrations,
            Table::Publications,
            Table::Subscriptions,
            Table::Rules,
            Table::Contacts,
            Table::Offline,
        ] {
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
}
