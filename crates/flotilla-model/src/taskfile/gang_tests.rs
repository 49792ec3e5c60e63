//! Gangs of several templates: the syntax, the checks and how they expand.

use super::*;
use crate::{gang_role_of, GangRole, Resources, TaskSpec, TopologyLevel};

fn expand_yaml(tasks: &str) -> Result<Vec<TaskSpec>, Vec<String>> {
    let f = TaskFile::from_yaml(&format!("tasks:\n{tasks}")).unwrap();
    expand("q", "s", &f.tasks, &SubmitLimits::default()).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

const LAUNCHER_AND_WORKERS: &str = "
  - name: prepare
    image: i
    resources: {cpu: 1}
  - name: worker
    count: 4
    image: ghcr.io/acme/worker:2
    gang: {group: train, topology: rack}
    resources: {cpu: 8, nvidia.com/gpu: 2}
    after: [prepare]
  - name: other
    image: i
    resources: {cpu: 1}
  - name: launcher
    image: ghcr.io/acme/launcher:2
    gang: {group: train, role: launch, leader: true}
    resources: {cpu: 2}
";

#[test]
fn a_gang_group_expands_into_one_gang_leader_first_with_consecutive_ranks_and_roles() {
    let specs = expand_yaml(LAUNCHER_AND_WORKERS).unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    // The group's templates come together where its first template is, the leader's first.
    assert_eq!(names, ["prepare", "launcher", "worker", "worker", "worker", "worker", "other"]);
    let roles = vec![GangRole { name: "launch".into(), count: 1 }, GangRole { name: "worker".into(), count: 4 }];
    for (k, spec) in specs[1..6].iter().enumerate() {
        let g = spec.gang.as_ref().unwrap();
        assert_eq!((g.size, g.rank), (5, k as u32));
        assert_eq!(g.roles, roles);
        // The domain one template states is the whole gang's.
        assert_eq!(g.topology, TopologyLevel::Rack);
        // The gang waits for what any of its templates waits for.
        assert_eq!(spec.after, vec!["prepare".to_string()]);
    }
    assert_eq!(specs[1].resources, Resources::new(2000, 0, 0));
    assert_eq!(specs[2].resources, Resources::new(8000, 0, 2));
    assert_eq!(specs[1].image, "ghcr.io/acme/launcher:2");
    let g = specs[4].gang.as_ref().unwrap();
    let (role, role_rank) = gang_role_of(&g.roles, g.rank).unwrap();
    assert_eq!((role.name.as_str(), role_rank), ("worker", 2));
    assert!(specs[0].gang.is_none() && specs[6].gang.is_none());
}

#[test]
fn without_a_leader_flag_the_groups_first_template_leads() {
    let specs = expand_yaml(
        "
  - {name: ps, count: 2, image: i, resources: {cpu: 1}, gang: {group: g}}
  - {name: worker, count: 3, image: i, resources: {cpu: 2}, gang: {group: g}}
",
    )
    .unwrap();
    let g = specs[0].gang.as_ref().unwrap();
    assert_eq!(g.roles[0], GangRole { name: "ps".into(), count: 2 });
    assert_eq!((specs[2].name.as_str(), specs[2].gang.as_ref().unwrap().rank), ("worker", 2));
    assert_eq!(g.topology, TopologyLevel::Cluster);
}

#[test]
fn bad_gang_groups_are_rejected_naming_the_field_and_the_problem() {
    let cases: [(&str, &str); 12] = [
        ("  - {name: a, image: i, resources: {cpu: 1}, gang: {group: g}}\n", "tasks[0].gang.group: gang group \"g\" has 1 member; a gang needs at least 2"),
        (
            "  - {name: a, count: 300, image: i, resources: {cpu: 1}, gang: {group: g}}\n  - {name: b, count: 300, image: i, resources: {cpu: 1}, gang: {group: g}}\n",
            "tasks[0].gang.group: gang group \"g\" has 600 members, over the limit of 512",
        ),
        ("  - {name: a, count: 2, image: i, resources: {cpu: 1}, gang: {group: G_1}}\n", "tasks[0].gang.group: \"G_1\" is not a valid name"),
        ("  - {name: a, count: 2, image: i, resources: {cpu: 1}, gang: {group: g, size: 2}}\n", "tasks[0].gang.size: cannot be combined with gang.group"),
        (
            "  - {name: a, image: i, resources: {cpu: 1}, gang: {group: g, leader: true}}\n  - {name: b, image: i, resources: {cpu: 1}, gang: {group: g, leader: true}}\n",
            "tasks[1].gang.leader: tasks[0] already leads gang group \"g\"",
        ),
        (
            "  - {name: a, image: i, resources: {cpu: 1}, gang: {group: g, role: w}}\n  - {name: b, image: i, resources: {cpu: 1}, gang: {group: g, role: w}}\n",
            "tasks[1].gang.role: \"w\" is also the role of tasks[0] in gang group \"g\"",
        ),
        (
            "  - {name: a, image: i, resources: {cpu: 1}, gang: {group: g, topology: rack}}\n  - {name: b, image: i, resources: {cpu: 1}, gang: {group: g, topology: zone}}\n",
            "tasks[1].gang.topology: \"zone\" differs from tasks[0].gang.topology \"rack\" of gang group \"g\"",
        ),
        (
            "  - {name: a, image: i, resources: {cpu: 1}, gang: {group: g}}\n  - {name: b, image: i, resources: {cpu: 1}, gang: {group: g}, priorityClass: critical}\n",
            "tasks[1].priorityClass: \"critical\" differs from tasks[0].priorityClass \"default\" of gang group \"g\"",
        ),
        (
            "  - {name: a, image: i, resources: {cpu: 1}, gang: {group: g}}\n  - {name: b, image: i, resources: {cpu: 1}, gang: {group: g}, after: [a]}\n",
            "tasks[1].after[0]: \"a\" is in the same gang group \"g\"; members of one gang start together and cannot wait for each other",
        ),
        ("  - {name: a, image: i, resources: {cpu: 1}, gang: {size: 2, role: w}}\n", "tasks[0].gang.role: needs gang.group"),
        ("  - {name: a, image: i, resources: {cpu: 1}, gang: {size: 2, leader: true}}\n", "tasks[0].gang.leader: needs gang.group"),
        (
            "  - {name: a, count: 2, image: i, resources: {cpu: 1}, gang: {group: g, role: Bad_Role}}\n",
            "tasks[0].gang.role: \"Bad_Role\" is not a valid role",
        ),
    ];
    for (tasks, want) in cases {
        let errors = expand_yaml(tasks).unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with(want)), "{tasks}: want {want}, got {errors:?}");
    }
}

#[test]
fn a_gang_group_has_at_most_sixteen_templates_and_long_default_roles_are_refused() {
    let many: String = (0..17).map(|i| format!("  - {{name: r{i}, image: i, resources: {{cpu: 1}}, gang: {{group: g}}}}\n")).collect();
    let errors = expand_yaml(&many).unwrap_err();
    assert!(
        errors.iter().any(|e| e.starts_with("tasks[0].gang.group: gang group \"g\" has 17 templates, over the limit of 16")),
        "{errors:?}"
    );
    let long = "a".repeat(60);
    let errors =
        expand_yaml(&format!("  - {{name: {long}, count: 2, image: i, resources: {{cpu: 1}}, gang: {{group: g}}}}\n")).unwrap_err();
    assert!(
        errors.iter().any(|e| e.starts_with("tasks[0].gang.role: ") && e.contains("(the template's name, by default) is not a valid role")),
        "{errors:?}"
    );
}

#[test]
fn a_template_without_group_fields_serializes_as_before() {
    // Digests of stored submissions hash the template's JSON: new fields must not appear.
    let t = TaskTemplate { name: "a".into(), gang: Some(GangTemplate { size: 2, ..Default::default() }), ..Default::default() };
    let json = serde_json::to_string(&t.gang).unwrap();
    assert_eq!(json, r#"{"size":2,"topology":null}"#);
    let g =
        crate::GangRef { id: crate::TaskId(1), size: 2, rank: 0, topology: TopologyLevel::Rack, same_value_of: None, roles: Vec::new() };
    assert!(!serde_json::to_string(&g).unwrap().contains("roles"));
}

#[test]
fn the_jobset_example_expands_into_one_gang_of_a_launcher_and_four_workers() {
    let f = TaskFile::from_yaml(include_str!("../../../../examples/train-jobset.yaml")).unwrap();
    let specs = expand("research", "mpi-train", &f.tasks, &SubmitLimits::default()).unwrap();
    let roles: Vec<(&str, u32)> = specs.iter().map(|s| (s.name.as_str(), s.gang.as_ref().unwrap().rank)).collect();
    assert_eq!(roles, [("launcher", 0), ("worker", 1), ("worker", 2), ("worker", 3), ("worker", 4)]);
    assert!(specs.iter().all(|s| s.gang.as_ref().unwrap().topology == TopologyLevel::Rack));
}
