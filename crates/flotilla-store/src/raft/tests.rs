//! Store tests: openraft's storage conformance suite, durability across reopen, and clear
//! errors for damaged files and mismatched identities.

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;

use super::*;
use crate::Command;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), RaftStorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = open(dir.path()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn store_passes_openraft_storage_conformance_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn queue_entry(term: u64, index: u64, name: &str) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request {
            now_ms: index,
            commands: vec![Command::PutQueue { queue: flotilla_model::Queue::new(name, 1.0), create: true }],
        }),
    }
}

fn membership_entry(index: u64, peers: &BTreeMap<u64, String>) -> Entry {
    let voters: BTreeSet<u64> = peers.keys().copied().collect();
    let nodes: BTreeMap<u64, Node> = peers.iter().map(|(id, addr)| (*id, Node::new(addr))).collect();
    Entry { log_id: log_id(1, index), payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)) }
}

/// Appends through the real callback path: openraft's `LogFlushed` cannot be built outside
/// the crate, so drive a blocking append the way the suite does.
async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.expect("append");
}

fn peers3() -> BTreeMap<u64, String> {
    (1..=3).map(|i| (i, format!("http://127.0.0.1:700{i}"))).collect()
}

#[tokio::test]
async fn log_vote_and_committed_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _sm) = open(dir.path()).unwrap();
        append(&mut log, vec![membership_entry(0, &peers3())]).await;
        append(&mut log, (1..=10).map(|i| queue_entry(1, i, &format!("q{i}"))).collect()).await;
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        log.save_committed(Some(log_id(1, 7))).await.unwrap();
        log.truncate(log_id(1, 9)).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 8)), "entries 9 and 10 were truncated");
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 7)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (3..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn snapshot_restores_state_after_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (_log, mut sm) = open(dir.path()).unwrap();
        let mut applied = sm.applied();
        let responses = sm.apply((1..=5).map(|i| queue_entry(1, i, &format!("q{i}"))).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(responses.len(), 5);
        assert_eq!(*applied.borrow_and_update(), 5, "the applied watch reports the last applied index");
        let mut builder = sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 5)));
        // Applied after the snapshot: gone after reopen until the log is replayed.
        sm.apply(vec![queue_entry(1, 6, "q6")]).await.unwrap();
    }
    let (_log, mut sm) = open(dir.path()).unwrap();
    assert_eq!(sm.last_applied(), Some(log_id(1, 5)));
    assert_eq!(*sm.applied().borrow(), 5);
    let state = sm.state();
    assert!(state.read().unwrap().queue("q5").is_some());
    assert!(state.read().unwrap().queue("q6").is_none());
    let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot is stored");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 5)));
}

#[tokio::test]
async fn installed_snapshot_replaces_state_and_persists() {
    let src = TempDir::new().unwrap();
    let dst = TempDir::new().unwrap();
    let snapshot = {
        let (_log, mut sm) = open(src.path()).unwrap();
        sm.apply(vec![queue_entry(2, 1, "from-leader")]).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap()
    };
    {
        let (_log, mut sm) = open(dst.path()).unwrap();
        sm.apply(vec![queue_entry(1, 1, "stale")]).await.unwrap();
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        assert!(sm.state().read().unwrap().queue("stale").is_none(), "install replaces the state");
        assert_eq!(sm.last_applied(), Some(log_id(2, 1)));
    }
    let (_log, sm) = open(dst.path()).unwrap();
    assert!(sm.state().read().unwrap().queue("from-leader").is_some());
}

#[test]
fn garbage_log_file_is_an_error_naming_the_file() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join(LOG_FILE), vec![0x5a; 64 * 1024]).unwrap();
    let err = open(dir.path()).err().expect("a garbage file must not open");
    let message = err.to_string();
    assert!(message.contains(LOG_FILE), "{message}");
    assert_eq!(std::fs::read(dir.path().join(LOG_FILE)).unwrap(), vec![0x5a; 64 * 1024], "the file was left untouched");
}

#[tokio::test]
async fn truncated_state_file_is_an_error_naming_the_file() {
    let dir = TempDir::new().unwrap();
    {
        let (_log, mut sm) = open(dir.path()).unwrap();
        sm.apply((1..=200).map(|i| queue_entry(1, i, &format!("queue-with-a-long-name-{i}"))).collect::<Vec<_>>()).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    }
    let file = dir.path().join(STATE_FILE);
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    match open(dir.path()) {
        Err(err) => assert!(err.to_string().contains(STATE_FILE), "{err}"),
        // redb may fall back to the previous commit slot; then it must not be an empty reset.
        Ok((_log, sm)) => panic!("a truncated file opened as if intact (last applied {:?})", sm.last_applied()),
    }
}

#[tokio::test]
async fn identity_check_refuses_other_node_and_disagreeing_peers() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, sm) = open(dir.path()).unwrap();
        check_identity(dir.path(), &log, &sm, 2, &peers3()).expect("a new data directory accepts any identity");
        append(&mut log, vec![membership_entry(0, &peers3())]).await;
    }
    let (log, sm) = open(dir.path()).unwrap();
    check_identity(dir.path(), &log, &sm, 2, &peers3()).expect("same id and peers");
    let err = check_identity(dir.path(), &log, &sm, 1, &peers3()).unwrap_err();
    assert!(matches!(err, StoreError::WrongNode { stored: 2, given: 1, .. }), "{err}");
    let mut four = peers3();
    four.insert(4, "http://127.0.0.1:7004".into());
    let err = check_identity(dir.path(), &log, &sm, 2, &four).unwrap_err();
    assert!(err.to_string().contains("replica 4"), "{err}");
    let mut moved = peers3();
    moved.insert(3, "http://10.0.0.3:7003".into());
    let err = check_identity(dir.path(), &log, &sm, 2, &moved).unwrap_err();
    assert!(err.to_string().contains("replica 3 is stored at http://127.0.0.1:7003"), "{err}");
}

#[test]
fn second_open_of_a_data_directory_is_refused() {
    let dir = TempDir::new().unwrap();
    let _first = open(dir.path()).unwrap();
    let err = open(dir.path()).err().expect("the files are locked");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}
