//! Raft storage for a Flotilla replica: the openraft type configuration, the log store and
//! the state-machine store, both on redb.
//!
//! # Model
//!
//! A replica keeps two redb files in its data directory:
//!
//! * [`LOG_FILE`] (`raft-log.redb`): the Raft log (one row per entry), the vote, the
//!   committed log id, the last purged log id and the replica's node id. Appends, votes and
//!   truncations are committed with [`redb::Durability::Immediate`] (fdatasync) before openraft
//!   is told they are flushed, so an acknowledged entry survives a crash. Because one durable
//!   commit costs about a millisecond, the server batches many commands into one entry (group
//!   commit); this store only has to make each entry durable.
//! * [`STATE_FILE`] (`raft-state.redb`): the latest snapshot: the serialized [`State`], the
//!   log id it covers and the membership at that point.
//!
//! The [`State`] itself lives in memory behind an `Arc<RwLock<State>>` that the server reads
//! for queries. On restart the latest snapshot is loaded and openraft replays the log entries
//! after it, up to the committed index, before the replica serves.
//!
//! A corrupt or truncated file is an error naming the file: nothing is ever reset silently.
//!
//! ```no_run
//! # fn main() -> Result<(), flotilla_store::raft::StoreError> {
//! let (log_store, state_machine) = flotilla_store::raft::open(std::path::Path::new("/var/lib/flotilla"))?;
//! let state = state_machine.state();
//! let mut applied = state_machine.applied();
//! println!("applied up to index {}", *applied.borrow_and_update());
//! let _queue = state.read().unwrap().queue("research").cloned();
//! # drop(log_store); Ok(()) }
//! ```

mod log_store;
mod state_machine;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

pub use log_store::LogStore;
pub use state_machine::{SnapshotBuilder, StateMachineStore};

use crate::{Request, Response};

openraft::declare_raft_types!(
    /// The openraft type configuration of a Flotilla group: entries carry a [`Request`]
    /// (a group-committed batch of commands), applying one gives a [`Response`].
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A replica's id, as given with `--id`.
pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, Node>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<NodeId>;

/// The Raft log, vote and committed index.
pub const LOG_FILE: &str = "raft-log.redb";
/// The latest state-machine snapshot.
pub const STATE_FILE: &str = "raft-state.redb";

/// redb's page cache per file. The state machine is in memory anyway; the log is mostly
/// written and read back once for replication.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Why a data directory could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot open {}: {source}. The file is corrupt, truncated or not a Flotilla store; it was left untouched. \
         Restore it from a backup, or move the data directory away to rejoin the group as an empty replica",
        file.display()
    )]
    Open { file: PathBuf, source: redb::DatabaseError },
    #[error("{} is already open by another process (is another replica using this data directory?)", file.display())]
    Locked { file: PathBuf },
    #[error(
        "{} is corrupt: {detail}. It was left untouched. Restore it from a backup, or move the data directory away \
         to rejoin the group as an empty replica",
        file.display()
    )]
    Corrupt { file: PathBuf, detail: String },
    #[error("{} could not be read or written: {detail}", file.display())]
    Db { file: PathBuf, detail: String },
    #[error(
        "data directory {} belongs to replica {stored}, but this replica was started with --id {given}. \
         Each replica needs its own data directory",
        data_dir.display()
    )]
    WrongNode { data_dir: PathBuf, stored: NodeId, given: NodeId },
    #[error("refusing to start: --peers disagrees with the group membership stored in {}: {detail}", data_dir.display())]
    MembershipMismatch { data_dir: PathBuf, detail: String },
}

impl StoreError {
    fn db(file: &Path, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { file: file.to_path_buf(), detail: e.to_string() }
    }
}

/// Opens (or creates) the two store files in `data_dir`.
///
/// Every stored record is decoded and the log checked for gaps before this returns, so a
/// damaged file fails here, at startup, with the file named.
pub fn open(data_dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir { path: data_dir.to_path_buf(), source })?;
    let log_store = LogStore::open(&data_dir.join(LOG_FILE))?;
    let state_machine = StateMachineStore::open(&data_dir.join(STATE_FILE))?;
    Ok((log_store, state_machine))
}

/// Opens one redb file, turning redb's errors (and a panic on a badly damaged file) into a
/// [`StoreError`] that names it.
fn open_db(file: &Path) -> Result<redb::Database, StoreError> {
    let path = file.to_path_buf();
    let opened = std::panic::catch_unwind(move || {
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            // Verify every page checksum on open: a damaged file must fail here, not panic later.
            .set_check_integrity_on_open(true)
            .create(&path)
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::Locked { file: file.to_path_buf() }),
        Ok(Err(source)) => Err(StoreError::Open { file: file.to_path_buf(), source }),
        Err(_) => Err(StoreError::Corrupt { file: file.to_path_buf(), detail: "redb could not read the file structure".into() }),
    }
}

/// Checks that this data directory belongs to replica `id` and that `peers` (id -> URL, the
/// `--peers` flag) agrees with the group membership stored in it, if any. Records `id` in a
/// data directory that has none yet.
///
/// A replica whose `--peers` disagrees with what the group agreed on could elect itself with
/// the wrong majority, so it must not start; the error says what differs.
pub fn check_identity(
    data_dir: &Path,
    log_store: &LogStore,
    state_machine: &StateMachineStore,
    id: NodeId,
    peers: &BTreeMap<NodeId, String>,
) -> Result<(), StoreError> {
    match log_store.node_id()? {
        Some(stored) if stored != id => return Err(StoreError::WrongNode { data_dir: data_dir.to_path_buf(), stored, given: id }),
        Some(_) => {}
        None => log_store.set_node_id(id)?,
    }
    let from_log = log_store.last_membership();
    let from_snapshot = state_machine.membership();
    let stored = match from_log {
        Some(m) if m.log_id() >= from_snapshot.log_id() => m,
        _ => from_snapshot,
    };
    if stored.log_id().is_none() {
        // A new replica: nothing agreed yet.
        return Ok(());
    }
    let stored_nodes: BTreeMap<NodeId, String> = stored.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    if &stored_nodes == peers {
        return Ok(());
    }
    let mut differences = Vec::new();
    for (id, addr) in &stored_nodes {
        match peers.get(id) {
            None => differences.push(format!("replica {id} ({addr}) is a member but is missing from --peers")),
            Some(given) if given != addr => differences.push(format!("replica {id} is stored at {addr} but --peers says {given}")),
            Some(_) => {}
        }
    }
    for (id, addr) in peers {
        if !stored_nodes.contains_key(id) {
            differences.push(format!("--peers lists replica {id} ({addr}) which is not a member"));
        }
    }
    Err(StoreError::MembershipMismatch {
        data_dir: data_dir.to_path_buf(),
        detail: format!(
            "{} (membership as of log {}). Start every replica with the same --peers as the stored membership; \
             to add or replace a replica, change the membership through the leader first (see docs/architecture.md, \
             \"Replicated state\")",
            differences.join("; "),
            stored.log_id().map(|l| l.to_string()).unwrap_or_default()
        ),
    })
}

#[cfg(test)]
mod tests;
