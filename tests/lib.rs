//! Cross-crate tests.
//!
//! Shared helpers for the test files in `tests/` and the helper binaries in `bin/`.

use flotilla_model::{SubmitLimits, TaskSpec, TaskTemplate};

/// An array task of `count` small tasks (1 CPU, 1 GiB), as a task file would hold it.
pub fn simple_template(count: u32) -> TaskTemplate {
    TaskTemplate {
        name: "agent".into(),
        count: Some(count),
        image: "busybox:1.36".into(),
        command: vec!["sleep".into(), "1".into()],
        resources: [("cpu".to_string(), "1".to_string()), ("memory".to_string(), "1Gi".to_string())].into(),
        ..Default::default()
    }
}

/// [`simple_template`] in `queue`/`task_set`, expanded as `flotilla submit` would send it.
pub fn simple_specs(queue: &str, task_set: &str, count: u32) -> Vec<TaskSpec> {
    flotilla_model::expand(queue, task_set, &[simple_template(count)], &SubmitLimits::default()).expect("a valid template")
}

/// A free loopback address: bound, then released for a server to bind again.
pub fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address")
}

/// The address of a peer URL (`http://127.0.0.1:7001`): what the replica it names listens on.
pub fn peer_listen_of(url: &str) -> std::net::SocketAddr {
    let authority = url.split("://").nth(1).expect("a URL").trim_end_matches('/');
    authority.parse().unwrap_or_else(|e| panic!("{url}: not IP:port: {e}"))
}
