//! The task-file format (YAML) and the validation every submission goes through.
//!
//! A task file names a queue, a task set and a list of task templates. A template
//! expands into one task, `count` tasks (an array task) or `gang.size` tasks (a gang); the
//! templates naming one `gang.group` make one gang of several templates (`gangs`).
//! Validation is all or nothing: every bad field is reported with its path
//! (`tasks[1].resources.memory: "2Gx" is not a quantity`) and nothing is accepted.
//!
//! ```
//! let file = flotilla_model::TaskFile::from_yaml(r#"
//! queue: research
//! taskSet: nightly
//! tasks:
//!   - name: agent
//!     count: 3
//!     image: ghcr.io/acme/agent:1.4.2
//!     resources: {cpu: 500m, memory: 2Gi}
//! "#).unwrap();
//! let specs = flotilla_model::expand(&file.queue.unwrap(), &file.task_set.unwrap(), &file.tasks,
//!     &flotilla_model::SubmitLimits::default()).unwrap();
//! assert_eq!(specs.len(), 3);
//! ```

mod errors;
mod expand;
mod format;
mod gangs;
mod graph;
mod validate;

#[cfg(test)]
mod gang_tests;
#[cfg(test)]
mod tests;

pub use errors::{FieldError, ValidationErrors};
pub use expand::{expand, SubmitLimits};
pub use format::{
    AffinityTemplate, GangTemplate, PlacementTemplate, PreferredTemplate, RequirementTemplate, RetryTemplate, SimTemplate, TaskFile,
    TaskTemplate,
};
pub use validate::{check_name, is_dns1123_label, parse_duration_ms};
