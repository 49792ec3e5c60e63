//! The state machine: [`State`] in memory, the latest snapshot in a redb file.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::{open_db, Entry, LogId, RaftStorageError, Snapshot, SnapshotMeta, StoreError, StoredMembership, TypeConfig};
use crate::{Response, State};

/// Holds the latest snapshot under the keys below: its meta (JSON) and the serialized State.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";

/// The [`RaftStateMachine`]: applies committed entries to the in-memory [`State`] and keeps
/// the latest snapshot on disk. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<RwLock<State>>,
    /// Last applied log id and the membership as of it. Changed only together with `state`,
    /// under `state`'s write lock, so a reader holding the state lock sees a matching pair.
    applied: Mutex<Applied>,
    applied_tx: watch::Sender<u64>,
    /// `None` once closed: the file lock is released even if stray clones remain.
    db: RwLock<Option<Database>>,
    file: PathBuf,
}

#[derive(Clone, Default)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl StateMachineStore {
    pub(super) fn open(file: &Path) -> Result<StateMachineStore, StoreError> {
        let db = open_db(file)?;
        let corrupt = |detail: String| StoreError::Corrupt { file: file.to_path_buf(), detail };
        {
            let txn = db.begin_write().map_err(|e| StoreError::db(file, e))?;
            txn.open_table(SNAPSHOT).map_err(|e| StoreError::db(file, e))?;
            txn.commit().map_err(|e| StoreError::db(file, e))?;
        }
        let (state, applied) = match read_snapshot(&db).map_err(|e| StoreError::db(file, e))? {
            None => (State::default(), Applied::default()),
            Some((meta, data)) => {
                let meta: SnapshotMeta =
                    serde_json::from_slice(&meta).map_err(|e| corrupt(format!("the snapshot's meta cannot be decoded: {e}")))?;
                let state: State = serde_json::from_slice(&data).map_err(|e| {
                    corrupt(format!("the snapshot of state up to log {} cannot be decoded: {e}", display_log_id(meta.last_log_id)))
                })?;
                (state, Applied { last_applied: meta.last_log_id, membership: meta.last_membership })
            }
        };
        let (applied_tx, _) = watch::channel(applied.last_applied.map(|l| l.index).unwrap_or(0));
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                state: Arc::new(RwLock::new(state)),
                applied: Mutex::new(applied),
                applied_tx,
                db: RwLock::new(Some(db)),
                file: file.to_path_buf(),
            }),
        })
    }

    /// The replicated state. Read it with `.read()`; never hold the guard across an `.await`
    /// (applying entries waits for it).
    pub fn state(&self) -> Arc<RwLock<State>> {
        self.inner.state.clone()
    }

    /// The index of the last applied log entry; changes after every applied batch, so
    /// watchers and the scheduler loop can wake on it.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        lock(&self.inner.applied).last_applied
    }

    /// The membership as of the last applied entry (or the latest snapshot).
    pub fn membership(&self) -> StoredMembership {
        lock(&self.inner.applied).membership.clone()
    }

    /// Closes the snapshot file (releasing its lock). The in-memory state stays readable.
    pub fn close(&self) {
        let db = self.inner.db.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(db);
    }

    /// The file the snapshots are written to.
    pub fn file(&self) -> &Path {
        &self.inner.file
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T, AnyError> + Send + 'static) -> Result<T, AnyError> {
        let inner = self.inner.clone();
        crate::run_blocking(move || f(&inner)).await.map_err(|e| AnyError::new(&e))?
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave `Applied` half-written (plain assignments).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn display_log_id(l: Option<LogId>) -> String {
    l.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
}

/// A stored snapshot, still encoded: (meta, data).
type StoredSnapshot = (Vec<u8>, Vec<u8>);

fn read_snapshot(db: &Database) -> Result<Option<StoredSnapshot>, AnyError> {
    let txn = db.begin_read().map_err(|e| AnyError::new(&e))?;
    let table = txn.open_table(SNAPSHOT).map_err(|e| AnyError::new(&e))?;
    let meta = table.get(KEY_META).map_err(|e| AnyError::new(&e))?.map(|v| v.value().to_vec());
    let data = table.get(KEY_DATA).map_err(|e| AnyError::new(&e))?.map(|v| v.value().to_vec());
    match (meta, data) {
        (Some(meta), Some(data)) => Ok(Some((meta, data))),
        (None, None) => Ok(None),
        _ => Err(AnyError::error("the snapshot table holds only one of meta and data")),
    }
}

impl Inner {
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, AnyError>) -> Result<T, AnyError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = guard.as_ref().ok_or_else(|| AnyError::error(format!("{} is closed (the replica stopped)", self.file.display())))?;
        f(db)
    }

    /// Writes meta and data in one durable transaction, replacing the previous snapshot
    /// unless that one is newer. Returns whether it wrote.
    ///
    /// Why the check: a snapshot built from the state while a newer snapshot is installed
    /// finishes after the install and would replace it; once the log is purged up to the
    /// newer one, a restart would find neither the entries nor the state between the two.
    fn write_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<bool, AnyError> {
        let meta_bytes = serde_json::to_vec(meta).map_err(|e| AnyError::new(&e))?;
        let written = self.with_db(|db| write_snapshot_in(db, meta, &meta_bytes, data))?;
        if !written {
            tracing::debug!(snapshot = %meta, "kept the stored snapshot: it is newer than this one");
        }
        Ok(written)
    }
}

/// Writes the snapshot if its last log id is at least the stored one's, comparing inside the
/// write transaction so that no other write can come between the comparison and the write.
fn write_snapshot_in(db: &Database, meta: &SnapshotMeta, meta_bytes: &[u8], data: &[u8]) -> Result<bool, AnyError> {
    let txn = db.begin_write().map_err(|e| AnyError::new(&e))?;
    let written = {
        let mut table = txn.open_table(SNAPSHOT).map_err(|e| AnyError::new(&e))?;
        let stored = table.get(KEY_META).map_err(|e| AnyError::new(&e))?.map(|v| v.value().to_vec());
        let stored: Option<SnapshotMeta> = stored.map(|m| serde_json::from_slice(&m)).transpose().map_err(|e| AnyError::new(&e))?;
        let newer_stored = stored.is_some_and(|stored| stored.last_log_id > meta.last_log_id);
        if !newer_stored {
            table.insert(KEY_META, meta_bytes).map_err(|e| AnyError::new(&e))?;
            table.insert(KEY_DATA, data).map_err(|e| AnyError::new(&e))?;
        }
        !newer_stored
    };
    if written {
        txn.commit().map_err(|e| AnyError::new(&e))?;
    } else {
        txn.abort().map_err(|e| AnyError::new(&e))?;
    }
    Ok(written)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let applied = lock(&self.inner.applied).clone();
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let last_index = {
            let mut state = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
            let mut applied = lock(&self.inner.applied);
            for entry in entries {
                if let Some(last) = applied.last_applied {
                    assert!(entry.log_id.index > last.index, "entry {} applied after {}", entry.log_id, last);
                }
                applied.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::default(),
                    EntryPayload::Normal(request) => state.apply_entry(&request, entry.log_id.leader_id.term),
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::default()
                    }
                };
                responses.push(response);
            }
            applied.last_applied.map(|l| l.index).unwrap_or(0)
        };
        self.inner.applied_tx.send_replace(last_index);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Called between applies: clone a consistent (state, applied) pair, then serialize the
        // copy off the apply path.
        let state = self.inner.state.read().unwrap_or_else(|e| e.into_inner());
        let applied = lock(&self.inner.applied).clone();
        SnapshotBuilder { store: self.clone(), state: state.clone(), applied }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let new_state: State =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        let meta_owned = meta.clone();
        // On disk first: once the in-memory state moves past the log, a restart must find it.
        self.blocking(move |inner| inner.write_snapshot(&meta_owned, &data))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        {
            let mut state = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
            let mut applied = lock(&self.inner.applied);
            *state = new_state;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        self.inner.applied_tx.send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        let Some((meta, data)) = self.inner.with_db(read_snapshot).map_err(|e| StorageIOError::read_snapshot(None, e))? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = serde_json::from_slice(&meta).map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Serializes a copy of the state taken between two applies, and stores it.
pub struct SnapshotBuilder {
    store: StateMachineStore,
    state: State,
    applied: Applied,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!("{}-{now_ms}", display_log_id(self.applied.last_applied)),
        };
        let state = std::mem::take(&mut self.state);
        let meta_owned = meta.clone();
        let data = self
            .store
            .blocking(move |inner| {
                let data = serde_json::to_vec(&state).map_err(|e| AnyError::new(&e))?;
                inner.write_snapshot(&meta_owned, &data)?;
                Ok(data)
            })
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

#[cfg(test)]
mod snapshot_write_tests {
    use openraft::CommittedLeaderId;
    use tempfile::TempDir;

    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("snapshot-{index}"),
        }
    }

    fn stored(store: &StateMachineStore) -> (SnapshotMeta, Vec<u8>) {
        let (meta, data) = store.inner.with_db(read_snapshot).unwrap().expect("a stored snapshot");
        (serde_json::from_slice(&meta).unwrap(), data)
    }

    #[test]
    fn an_older_snapshot_written_after_a_newer_one_does_not_replace_it() {
        let dir = TempDir::new().unwrap();
        let store = StateMachineStore::open(&dir.path().join("sm.redb")).unwrap();
        assert!(store.inner.write_snapshot(&meta(10), b"state at 10").unwrap());
        // Built before the install of snapshot 10 finished, written after it.
        assert!(!store.inner.write_snapshot(&meta(5), b"state at 5").unwrap());
        let (m, data) = stored(&store);
        assert_eq!((m, data), (meta(10), b"state at 10".to_vec()));
        // The same log id again, or a newer one, is written.
        assert!(store.inner.write_snapshot(&meta(10), b"state at 10 again").unwrap());
        assert!(store.inner.write_snapshot(&meta(12), b"state at 12").unwrap());
        assert_eq!(stored(&store), (meta(12), b"state at 12".to_vec()));
    }
}
