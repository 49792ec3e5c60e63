//! The `after` graph: every name refers to a template of the file, and there is no cycle.

use std::collections::HashMap;

use super::{FieldError, TaskTemplate};
use crate::quote;

/// `after` entries name a template of this file other than the template itself.
pub(super) fn check_after_names(p: &str, t: &TaskTemplate, names: &HashMap<&str, usize>, errors: &mut Vec<FieldError>) {
    for (j, dep) in t.after.iter().enumerate() {
        if !names.contains_key(dep.as_str()) {
            errors.push(FieldError::new(format!("{p}.after[{j}]"), format!("{} is not the name of a task in this file", quote(dep))));
        } else if dep == &t.name {
            errors.push(FieldError::new(format!("{p}.after[{j}]"), "a task cannot wait for itself"));
        }
    }
}

/// Rejects `after` cycles, naming the tasks on the cycle.
pub(super) fn check_dependency_graph(templates: &[TaskTemplate], names: &HashMap<&str, usize>, errors: &mut Vec<FieldError>) {
    use petgraph::graphmap::DiGraphMap;
    let mut graph: DiGraphMap<usize, ()> = DiGraphMap::new();
    for (i, t) in templates.iter().enumerate() {
        graph.add_node(i);
        for dep in &t.after {
            if let Some(&j) = names.get(dep.as_str()) {
                if j != i {
                    graph.add_edge(j, i, ());
                }
            }
        }
    }
    if let Err(cycle) = petgraph::algo::toposort(&graph, None) {
        let start = cycle.node_id();
        let members: Vec<String> = petgraph::algo::tarjan_scc(&graph)
            .into_iter()
            .find(|scc| scc.contains(&start))
            .unwrap_or_else(|| vec![start])
            .into_iter()
            .map(|i| templates[i].name.clone())
            .collect();
        errors.push(FieldError::new(format!("tasks[{start}].after"), format!("dependency cycle between {}", members.join(", "))));
    }
}
