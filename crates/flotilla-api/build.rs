//! Generates the gRPC code from proto/ with protox: no system protoc needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "flotilla/v1/common.proto",
        "flotilla/v1/queues.proto",
        "flotilla/v1/tasks.proto",
        "flotilla/v1/clusters.proto",
        "flotilla/v1/executor.proto",
        "flotilla/v1/replicas.proto",
        "flotilla/raft/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
