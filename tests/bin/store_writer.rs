//! Test helper for the crash test in `tests/raft_group.rs`: opens a one-replica group on
//! the data directory given as the first argument and submits tasks forever from several
//! concurrent writers, printing `ACK <client_request_id> <task id>` once each submission is
//! committed (durable). The test kills it with SIGKILL mid-writes and checks every printed
//! acknowledgement survived.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use flotilla_server::raft::{Replica, ReplicaConfig};
use flotilla_store::{Command, CommandResult};

const WRITERS: usize = 8;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let data_dir = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: store_writer DATA_DIR"))?;
    // Never contacted: a one-replica group sends no Raft traffic.
    let peers = BTreeMap::from([(1, "http://127.0.0.1:9".to_string())]);
    let mut config = ReplicaConfig::new(1, peers, data_dir.into(), None);
    config.snapshot_every_logs = 200;
    config.max_in_snapshot_log_to_keep = 20;
    let replica = Replica::open(config).await?;
    replica.bootstrap();
    while !replica.is_leader() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The queue may exist from an earlier run in the same directory.
    let _ = replica.propose(Command::PutQueue { queue: flotilla_model::Queue::new("q", 1.0), create: true }).await?;
    let spec = flotilla_tests::simple_specs("q", "crash", 1).remove(0);
    let run = std::process::id();
    println!("READY");
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let replica = Arc::clone(&replica);
        let spec = spec.clone();
        writers.push(tokio::spawn(async move {
            for i in 0u64.. {
                let client_request_id = format!("{run}-{w}-{i}");
                let command = Command::Submit {
                    client_request_id: client_request_id.clone(),
                    queue: "q".into(),
                    task_set: "crash".into(),
                    specs: vec![spec.clone()],
                    body_digest: 0,
                };
                match replica.propose(command).await {
                    Ok(CommandResult::Submitted { task_ids }) => {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "ACK {client_request_id} {}", task_ids[0].0);
                        let _ = out.flush();
                    }
                    other => panic!("submit {client_request_id} failed: {other:?}"),
                }
            }
        }));
    }
    for w in writers {
        w.await?;
    }
    Ok(())
}
