//! Cross-crate tests.
//!
//! Shared helpers for the test files in `tests/` and the helper binaries in `bin/`.

use flotilla_model::{SubmitLimits, TaskSpec, TaskTemplate};

/// `count` copies of a small task (1 CPU, 1 GiB) in `queue`/`task_set`, as `flotilla submit`
/// would send them after expanding the task file.
pub fn simple_specs(queue: &str, task_set: &str, count: u32) -> Vec<TaskSpec> {
    let template = TaskTemplate {
        name: "agent".into(),
        count: Some(count),
        image: "busybox:1.36".into(),
        command: vec!["sleep".into(), "1".into()],
        resources: [("cpu".to_string(), "1".to_string()), ("memory".to_string(), "1Gi".to_string())].into(),
        ..Default::default()
    };
    flotilla_model::expand(queue, task_set, &[template], &SubmitLimits::default()).expect("a valid template")
}
