//! The Raft log, vote and committed index in one redb file.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, EntryPayload, LogState, OptionalSend, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{open_db, Entry, LogId, NodeId, RaftStorageError, StoreError, StoredMembership, TypeConfig, Vote};

/// Log index -> JSON-encoded [`Entry`].
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small records, JSON-encoded, under the keys below.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_NODE_ID: &str = "node_id";

/// The redb-backed [`RaftLogStorage`]. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` once closed: the file lock is released even if stray clones remain.
    db: RwLock<Option<Database>>,
    file: PathBuf,
    /// The latest membership entry found in the log when it was opened (for [`super::check_identity`]).
    membership_at_open: Option<StoredMembership>,
    /// The last committed index openraft reported, for metrics.
    committed_index: std::sync::atomic::AtomicU64,
}

impl LogStore {
    pub(super) fn open(file: &Path) -> Result<LogStore, StoreError> {
        let db = open_db(file)?;
        let corrupt = |detail: String| StoreError::Corrupt { file: file.to_path_buf(), detail };
        {
            // Create the tables so that readers never see "table does not exist".
            let txn = db.begin_write().map_err(|e| StoreError::db(file, e))?;
            txn.open_table(LOG).map_err(|e| StoreError::db(file, e))?;
            txn.open_table(META).map_err(|e| StoreError::db(file, e))?;
            txn.commit().map_err(|e| StoreError::db(file, e))?;
        }
        let mut membership_at_open = None;
        let mut committed_index = 0;
        {
            let txn = db.begin_read().map_err(|e| StoreError::db(file, e))?;
            let meta = txn.open_table(META).map_err(|e| StoreError::db(file, e))?;
            let read_meta = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
                Ok(meta.get(key).map_err(|e| StoreError::db(file, e))?.map(|v| v.value().to_vec()))
            };
            if let Some(bytes) = read_meta(KEY_VOTE)? {
                serde_json::from_slice::<Vote>(&bytes).map_err(|e| corrupt(format!("the stored vote cannot be decoded: {e}")))?;
            }
            if let Some(bytes) = read_meta(KEY_COMMITTED)? {
                let committed = serde_json::from_slice::<Option<LogId>>(&bytes)
                    .map_err(|e| corrupt(format!("the stored committed log id cannot be decoded: {e}")))?;
                committed_index = committed.map_or(0, |l| l.index + 1);
            }
            if let Some(bytes) = read_meta(KEY_NODE_ID)? {
                serde_json::from_slice::<NodeId>(&bytes).map_err(|e| corrupt(format!("the stored node id cannot be decoded: {e}")))?;
            }
            let last_purged = match read_meta(KEY_LAST_PURGED)? {
                Some(bytes) => serde_json::from_slice::<Option<LogId>>(&bytes)
                    .map_err(|e| corrupt(format!("the stored last purged log id cannot be decoded: {e}")))?,
                None => None,
            };
            // Every entry must decode, sit under its own index, and follow the previous one.
            let log = txn.open_table(LOG).map_err(|e| StoreError::db(file, e))?;
            let mut expected = last_purged.map(|l| l.index + 1);
            for row in log.iter().map_err(|e| StoreError::db(file, e))? {
                let (key, value) = row.map_err(|e| StoreError::db(file, e))?;
                let index = key.value();
                let entry: Entry =
                    serde_json::from_slice(value.value()).map_err(|e| corrupt(format!("log entry {index} cannot be decoded: {e}")))?;
                if entry.log_id.index != index {
                    return Err(corrupt(format!("log entry stored under index {index} says it is entry {}", entry.log_id)));
                }
                if let Some(expected) = expected {
                    if index != expected {
                        return Err(corrupt(format!("the log has a gap: entry {expected} is missing before entry {index}")));
                    }
                }
                expected = Some(index + 1);
                if let EntryPayload::Membership(m) = &entry.payload {
                    membership_at_open = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                }
            }
        }
        Ok(LogStore {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                file: file.to_path_buf(),
                membership_at_open,
                committed_index: std::sync::atomic::AtomicU64::new(committed_index),
            }),
        })
    }

    /// Closes the database file (releasing its lock) once pending operations finish. Later
    /// operations, from clones still held by stopping tasks, fail instead of writing.
    pub fn close(&self) {
        let db = self.inner.db.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(db);
    }

    /// The file this store writes.
    pub fn file(&self) -> &Path {
        &self.inner.file
    }

    /// The id of the replica that owns this data directory, if recorded.
    pub fn node_id(&self) -> Result<Option<NodeId>, StoreError> {
        self.inner.read_meta(KEY_NODE_ID).map_err(|e| StoreError::db(&self.inner.file, e))
    }

    pub(super) fn set_node_id(&self, id: NodeId) -> Result<(), StoreError> {
        self.inner.write_meta(KEY_NODE_ID, &id, Durability::Immediate).map_err(|e| StoreError::db(&self.inner.file, e))
    }

    /// The highest log index known to be committed, if any (kept in memory; on disk it may lag).
    pub fn committed_index(&self) -> Option<u64> {
        // Stored as index + 1 so that 0 means none.
        self.inner.committed_index.load(std::sync::atomic::Ordering::Relaxed).checked_sub(1)
    }

    /// The latest membership entry that was in the log when the store was opened.
    pub fn last_membership(&self) -> Option<StoredMembership> {
        self.inner.membership_at_open.clone()
    }

    /// Runs a blocking (fsync-ing) closure off the async workers.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T, AnyError> + Send + 'static) -> Result<T, AnyError> {
        let inner = self.inner.clone();
        crate::run_blocking(move || f(&inner)).await.map_err(|e| AnyError::new(&e))?
    }
}

impl Inner {
    /// Runs `f` on the open database, or fails once the store is closed.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, AnyError>) -> Result<T, AnyError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = guard.as_ref().ok_or_else(|| AnyError::error(format!("{} is closed (the replica stopped)", self.file.display())))?;
        f(db)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AnyError> {
        self.with_db(|db| self.read_meta_in(db, key))
    }

    fn read_meta_in<T: DeserializeOwned>(&self, db: &Database, key: &str) -> Result<Option<T>, AnyError> {
        let txn = db.begin_read().map_err(|e| AnyError::new(&e))?;
        let table = txn.open_table(META).map_err(|e| AnyError::new(&e))?;
        let Some(value) = table.get(key).map_err(|e| AnyError::new(&e))? else { return Ok(None) };
        serde_json::from_slice(value.value()).map(Some).map_err(|e| AnyError::new(&e))
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T, durability: Durability) -> Result<(), AnyError> {
        let bytes = serde_json::to_vec(value).map_err(|e| AnyError::new(&e))?;
        self.with_db(|db| Self::write_meta_in(db, key, &bytes, durability))
    }

    fn write_meta_in(db: &Database, key: &str, bytes: &[u8], durability: Durability) -> Result<(), AnyError> {
        let mut txn = db.begin_write().map_err(|e| AnyError::new(&e))?;
        txn.set_durability(durability).map_err(|e| AnyError::new(&e))?;
        {
            let mut table = txn.open_table(META).map_err(|e| AnyError::new(&e))?;
            table.insert(key, bytes).map_err(|e| AnyError::new(&e))?;
        }
        txn.commit().map_err(|e| AnyError::new(&e))
    }

    fn read_entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, AnyError> {
        self.with_db(|db| Self::read_entries_in(db, range))
    }

    fn read_entries_in(db: &Database, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, AnyError> {
        let txn = db.begin_read().map_err(|e| AnyError::new(&e))?;
        let table = txn.open_table(LOG).map_err(|e| AnyError::new(&e))?;
        let mut entries = Vec::new();
        for row in table.range::<u64>(range).map_err(|e| AnyError::new(&e))? {
            let (_, value) = row.map_err(|e| AnyError::new(&e))?;
            let entry: Entry = serde_json::from_slice(value.value()).map_err(|e| AnyError::new(&e))?;
            entries.push(entry);
        }
        Ok(entries)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, AnyError> {
        self.with_db(Self::last_entry_log_id_in)
    }

    fn last_entry_log_id_in(db: &Database) -> Result<Option<LogId>, AnyError> {
        let txn = db.begin_read().map_err(|e| AnyError::new(&e))?;
        let table = txn.open_table(LOG).map_err(|e| AnyError::new(&e))?;
        let Some((_, value)) = table.last().map_err(|e| AnyError::new(&e))? else { return Ok(None) };
        let entry: Entry = serde_json::from_slice(value.value()).map_err(|e| AnyError::new(&e))?;
        Ok(Some(entry.log_id))
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        // Reads hit redb's page cache and never fsync: no need to leave the async worker.
        self.inner.read_entries(bounds(&range)).map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id: Option<LogId> =
            self.inner.read_meta::<Option<LogId>>(KEY_LAST_PURGED).map_err(StorageIOError::read_logs)?.flatten();
        let last_log_id = self.inner.last_entry_log_id().map_err(StorageIOError::read_logs)?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        let vote = *vote;
        // A vote must be on disk before it is sent: a restarted replica must not vote twice in a term.
        self.blocking(move |inner| inner.write_meta(KEY_VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        self.inner.read_meta(KEY_VOTE).map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        self.inner.committed_index.store(committed.map_or(0, |l| l.index + 1), std::sync::atomic::Ordering::Relaxed);
        // Only an optimisation (a restart re-applies up to here before a leader is known), so
        // it rides along with the next durable commit instead of costing an fsync of its own.
        self.blocking(move |inner| inner.write_meta(KEY_COMMITTED, &committed, Durability::None))
            .await
            .map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self.inner.read_meta::<Option<LogId>>(KEY_COMMITTED).map_err(StorageIOError::read)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let result = self
            .blocking(move |inner| {
                inner.with_db(|db| {
                    let txn = db.begin_write().map_err(|e| AnyError::new(&e))?;
                    {
                        let mut table = txn.open_table(LOG).map_err(|e| AnyError::new(&e))?;
                        for entry in &entries {
                            let bytes = serde_json::to_vec(entry).map_err(|e| AnyError::new(&e))?;
                            table.insert(entry.log_id.index, bytes.as_slice()).map_err(|e| AnyError::new(&e))?;
                        }
                    }
                    // Durability::Immediate (the default): fdatasync before the entries count as flushed.
                    txn.commit().map_err(|e| AnyError::new(&e))
                })
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let since = log_id.index;
        self.blocking(move |inner| {
            inner.with_db(|db| {
                let txn = db.begin_write().map_err(|e| AnyError::new(&e))?;
                {
                    let mut table = txn.open_table(LOG).map_err(|e| AnyError::new(&e))?;
                    table.retain_in::<u64, _>(since.., |_, _| false).map_err(|e| AnyError::new(&e))?;
                }
                txn.commit().map_err(|e| AnyError::new(&e))
            })
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.blocking(move |inner| {
            let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| AnyError::new(&e))?;
            inner.with_db(|db| {
                let mut txn = db.begin_write().map_err(|e| AnyError::new(&e))?;
                // The entries are covered by a durable snapshot already; if a crash undoes the
                // purge the log merely holds entries it no longer needs, so no fsync of its own.
                txn.set_durability(Durability::None).map_err(|e| AnyError::new(&e))?;
                {
                    let mut table = txn.open_table(LOG).map_err(|e| AnyError::new(&e))?;
                    table.retain_in::<u64, _>(..=log_id.index, |_, _| false).map_err(|e| AnyError::new(&e))?;
                    let mut meta = txn.open_table(META).map_err(|e| AnyError::new(&e))?;
                    meta.insert(KEY_LAST_PURGED, bytes.as_slice()).map_err(|e| AnyError::new(&e))?;
                }
                txn.commit().map_err(|e| AnyError::new(&e))
            })
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }
}
