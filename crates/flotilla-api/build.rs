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
        "flotilla/v1/priority_classes.proto",
        "flotilla/raft/v1/raft.proto",
        // Wire-compatible APIs of other systems' clients (docs/armada.md, docs/clients.md).
        "armada/api/submit.proto",
        "armada/api/event.proto",
        "keda/externalscaler.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    for f in ["armada/api/health.proto", "armada/k8s/core.proto", "armada/k8s/resource.proto"] {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    // The same descriptors feed gRPC server reflection (`flotilla_api::FILE_DESCRIPTOR_SET`).
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The internal Raft service is never served on the client port: not listed either.
    let mut public = fds.clone();
    public.file.retain(|f| !f.name().starts_with("flotilla/raft/"));
    std::fs::write(out.join("flotilla_descriptor.bin"), prost::Message::encode_to_vec(&public))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
