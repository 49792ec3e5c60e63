//! Python clients against a real `flotilla dev` process (issue 15): the Armada Python client
//! from PyPI (`tests/python/armada_flow.py`) and the grpcio example of docs/clients.md
//! (`examples/python/flotilla_client.py`).
//!
//! Needs `python3` with `armada-client` (0.5.x), `grpcio` and `grpcio-tools`; `.ci/run`
//! installs them. Without them the tests fail and say what to install: a skipped test
//! would hide that the Armada API went untested.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "python3 -m pip install armada-client==0.5.1 grpcio grpcio-tools";
/// The longest a Python driver may run before it is killed and the test fails.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

use flotilla_tests::repo_root;

fn require_python() {
    let out = Command::new("python3").args(["-c", "import grpc, grpc_tools, armada_client"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            panic!("python3 lacks the packages these tests need ({}); install them: {INSTALL}", String::from_utf8_lossy(&o.stderr).trim())
        }
        Err(e) => panic!("python3 is not available ({e}); install Python 3 and then: {INSTALL}"),
    }
}

/// Starts `flotilla dev` on two fault-free simulated clusters (so each job's events are
/// exactly its own outcome), time five times faster, and waits for its gRPC address.
fn start_dev() -> flotilla_tests::DevProcess {
    flotilla_tests::DevProcess::start("tests/fixtures/clusters-calm.toml", "5")
}

/// Runs a Python script with `args`; its output, or a panic with it on failure or timeout.
fn run_python(script: &str, args: &[&str]) -> String {
    let mut child = Command::new("python3")
        .arg(repo_root().join(script))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let started = Instant::now();
    while child.try_wait().expect("wait for python3").is_none() {
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().expect("python3's output");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(out.status.success(), "{script} failed ({:?} after {:?}):\n{stdout}\n{stderr}", out.status, started.elapsed());
    stdout
}

#[test]
fn armada_python_client_creates_a_queue_submits_50_jobs_follows_their_events_to_the_end_and_cancels_one() {
    require_python();
    let dev = start_dev();
    let out = run_python("tests/python/armada_flow.py", &[dev.grpc_host_port()]);
    assert!(out.contains("armada flow: ok (50 jobs"), "{out}");
    assert!(out.contains("2 failed, 1 cancelled"), "{out}");
}

#[test]
fn python_grpcio_example_submits_tasks_and_watches_them_succeed() {
    require_python();
    let dev = start_dev();
    let out = run_python("examples/python/flotilla_client.py", &["--server", dev.grpc_host_port()]);
    assert!(out.contains("all tasks succeeded"), "{out}");
}
