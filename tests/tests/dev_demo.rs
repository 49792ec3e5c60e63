//! `flotilla dev --demo` from a directory outside the repository (issue 16, item 6): the demo's
//! task files and the example federation are built into the binary, the log goes to a file
//! whose path is printed once, and without a terminal the progress is plain lines.

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn dev_demo_runs_from_any_directory_with_its_log_in_a_file_and_plain_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dev.log");
    let child = Command::new(flotilla_tests::flotilla_bin())
        .args(["dev", "--demo", "--exit-after-demo", "--speed", "10"])
        .args(["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--log-file")
        .arg(&log)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla dev starts");
    let (out, _) = flotilla_tests::wait_output(child, Duration::from_secs(240));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("demo tasks finished in"), "the demo ran to its end from {}:\n{all}", dir.path().display());
    assert!(stdout.lines().any(|l| l.starts_with('[') && l.contains("s] tasks: ")), "plain progress lines without a terminal:\n{all}");
    assert!(!stdout.contains('\r') && !stdout.contains('\u{1b}'), "no terminal control codes when stdout is not a terminal");
    assert_eq!(stderr.matches(&format!("logging to {}", log.display())).count(), 1, "the log's path is printed once:\n{all}");
    assert!(!stderr.contains(" INFO ") && !stdout.contains(" INFO "), "no log lines on the terminal:\n{all}");
    let logged = std::fs::read_to_string(&log).expect("the log file");
    assert!(logged.contains("INFO") && logged.contains("scheduling cycle committed"), "the log went to the file");
    assert!(!logged.contains('\u{1b}'), "no colour codes in the log file");
}
