use super::*;
use crate::{AffinityOperator, NodeRequirement, PodSecurity, Resources, SpotPolicy, TaskSpec, TopologyLevel};

fn template(name: &str) -> TaskTemplate {
    TaskTemplate {
        name: name.into(),
        image: "busybox:1.36".into(),
        resources: [("cpu".to_string(), "1".to_string())].into(),
        ..Default::default()
    }
}

fn errors_of(templates: &[TaskTemplate]) -> Vec<String> {
    expand("q", "s", templates, &SubmitLimits::default()).unwrap_err().0.iter().map(|e| e.to_string()).collect()
}

#[test]
fn issue_example_file_parses_and_expands() {
    let text = r#"
queue: research
taskSet: nightly-eval
tasks:
  - name: agent
    count: 200
    priorityClass: default
    image: ghcr.io/acme/agent:1.4.2
    command: [python, -m, agent]
    env: {MODEL: large}
    resources: {cpu: 500m, memory: 2Gi}
    limits: {memory: 4Gi}
    retry: {maxAttempts: 3, backoff: 30s}
    checkpoint: true
    maxRuntime: 2h
    sim: {duration: 20s}
  - name: train
    gang: {size: 8, topology: rack}
    image: ghcr.io/acme/train:2.0
    resources: {cpu: 32, memory: 256Gi, nvidia.com/gpu: 8}
    placement: {gpuModel: H100, spot: never}
    after: [agent]
"#;
    let f = TaskFile::from_yaml(text).unwrap();
    let specs = expand("research", "nightly-eval", &f.tasks, &SubmitLimits::default()).unwrap();
    assert_eq!(specs.len(), 208);
    assert_eq!(specs[199].index, 199);
    assert_eq!(specs[0].resources, Resources::new(500, 2 << 30, 0));
    assert_eq!(specs[0].retry.backoff_ms, 30_000);
    assert_eq!(specs[0].max_runtime_ms, Some(7_200_000));
    assert_eq!(specs[0].sim.as_ref().unwrap().duration_ms, 20_000);
    let train = &specs[207];
    assert_eq!(train.resources, Resources::new(32_000, 256 << 30, 8));
    assert_eq!(train.gang.as_ref().unwrap().rank, 7);
    assert_eq!(train.gang.as_ref().unwrap().topology, TopologyLevel::Rack);
    assert_eq!(train.placement.spot, SpotPolicy::Never);
    assert_eq!(train.after, vec!["agent".to_string()]);
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let err = TaskFile::from_yaml("queue: a\ntasks:\n  - name: x\n    resources: {cpu: [1\n").unwrap_err();
    assert!(err.message.contains("line"), "{}", err.message);
}

#[test]
fn unknown_fields_are_rejected() {
    let err = TaskFile::from_yaml("queue: a\ntasks:\n  - name: x\n    imagee: busybox\n").unwrap_err();
    assert!(err.message.contains("imagee"), "{}", err.message);
}

#[test]
fn bad_quantity_names_its_path() {
    let mut t = template("a");
    t.resources.insert("memory".into(), "2Gx".into());
    assert_eq!(errors_of(&[template("ok"), t]), vec!["tasks[1].resources.memory: \"2Gx\" is not a quantity"]);
}

#[test]
fn limits_below_requests_are_rejected() {
    let mut t = template("a");
    t.resources.insert("memory".into(), "4Gi".into());
    t.limits.insert("memory".into(), "2Gi".into());
    assert_eq!(errors_of(&[t]), vec!["tasks[0].limits.memory: \"2Gi\" is below the request \"4Gi\""]);
}

#[test]
fn a_task_may_request_mig_slices_and_time_sliced_replicas_but_not_with_whole_gpus() {
    let mut t = template("a");
    t.resources.insert("nvidia.com/mig-1g.10gb".into(), "2".into());
    t.resources.insert("nvidia.com/gpu.shared".into(), "1".into());
    let specs = expand("q", "s", &[t.clone()], &SubmitLimits::default()).unwrap();
    assert_eq!(specs[0].resources.extended.get("nvidia.com/mig-1g.10gb"), Some(&2));
    assert_eq!(specs[0].resources.extended.get("nvidia.com/gpu.shared"), Some(&1));
    assert_eq!(specs[0].resources.gpu, 0);

    t.resources.insert("nvidia.com/gpu".into(), "1".into());
    assert_eq!(
        errors_of(&[t]),
        vec![
            "tasks[0].resources.nvidia.com/gpu.shared: cannot be combined with nvidia.com/gpu: request whole GPUs or a shared GPU (a MIG slice or time-sliced replica), not both",
            "tasks[0].resources.nvidia.com/mig-1g.10gb: cannot be combined with nvidia.com/gpu: request whole GPUs or a shared GPU (a MIG slice or time-sliced replica), not both",
        ]
    );
}

#[test]
fn a_bad_mig_profile_name_is_refused_naming_the_field_and_quoting_a_short_prefix() {
    for bad in ["nvidia.com/mig-0g.10gb", "nvidia.com/mig-abc"] {
        let mut t = template("a");
        t.resources.insert(bad.into(), "1".into());
        let errors = errors_of(&[t]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(&format!("tasks[0].resources.{bad}: \"{bad}\" is not a MIG profile")), "{errors:?}");
    }
    let long = format!("nvidia.com/mig-{}", "x".repeat(5000));
    let mut t = template("a");
    t.limits.insert(long.clone(), "1".into());
    let errors = errors_of(&[t]);
    assert!(errors.iter().any(|e| e.starts_with("tasks[0].limits.nvidia.com/mig-x") && e.contains("is not a MIG profile")), "{errors:?}");
    assert!(errors.iter().all(|e| e.len() < 1500), "the bad name is echoed only in part: {errors:?}");
}

#[test]
fn a_task_cannot_request_pods_it_is_one() {
    let mut t = template("a");
    t.resources.insert("pods".into(), "2".into());
    assert_eq!(errors_of(&[t]), vec!["tasks[0].resources.pods: cannot be requested: every task is one pod"]);
}

#[test]
fn gang_rules_are_enforced() {
    let mut small = template("a");
    small.gang = Some(GangTemplate { size: 1, ..Default::default() });
    let mut counted = template("b");
    counted.gang = Some(GangTemplate { size: 4, topology: Some("galaxy".into()), ..Default::default() });
    counted.count = Some(2);
    let errs = errors_of(&[small, counted]);
    assert!(errs.iter().any(|e| e.starts_with("tasks[0].gang.size: 1 must be at least 2")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("tasks[1].count: cannot be combined with gang")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("tasks[1].gang.topology")), "{errs:?}");
}

#[test]
fn unknown_and_cyclic_dependencies_are_rejected() {
    let mut a = template("a");
    a.after = vec!["nope".into()];
    assert_eq!(errors_of(&[a]), vec!["tasks[0].after[0]: \"nope\" is not the name of a task in this file"]);
    let mut a = template("a");
    a.after = vec!["b".into()];
    let mut b = template("b");
    b.after = vec!["a".into()];
    let errs = errors_of(&[a, b]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("dependency cycle between"), "{errs:?}");
}

#[test]
fn a_dependency_on_a_task_defined_later_in_the_file_is_valid_and_kept() {
    let mut report = template("report");
    report.after = vec!["train".into()];
    let specs = expand("q", "s", &[report, template("train")], &SubmitLimits::default()).unwrap();
    assert_eq!(
        specs.iter().map(|s| (s.name.as_str(), s.after.clone())).collect::<Vec<_>>(),
        vec![("report", vec!["train".to_string()]), ("train", vec![])]
    );
}

#[test]
fn names_must_be_dns_labels() {
    assert!(is_dns1123_label("agent-7"));
    assert!(!is_dns1123_label("Agent"));
    assert!(!is_dns1123_label("-a"));
    assert!(!is_dns1123_label(&"a".repeat(64)));
    let errs = errors_of(&[template("Bad_Name")]);
    assert!(errs[0].starts_with("tasks[0].name: \"Bad_Name\" is not a valid name"), "{errs:?}");
}

#[test]
fn size_limits_reject_the_whole_request() {
    let mut t = template("a");
    t.count = Some(10_001);
    assert_eq!(errors_of(&[t]), vec!["tasks: 10001 tasks exceed the limit of 10000 per submission"]);
}

#[test]
fn pod_security_defaults_to_restricted_and_reads_baseline_privileged_and_a_uid() {
    let f = TaskFile::from_yaml(
            "tasks:\n  - {name: a, image: i, resources: {cpu: 1}}\n  - {name: b, image: i, resources: {cpu: 1}, podSecurity: baseline, runAsUser: 0}\n  - {name: c, image: i, resources: {cpu: 1}, podSecurity: privileged}\n  - {name: d, image: i, resources: {cpu: 1}, runAsUser: 65532}\n",
        )
        .unwrap();
    let specs = expand("q", "s", &f.tasks, &SubmitLimits::default()).unwrap();
    let got: Vec<_> = specs.iter().map(|s| (s.pod_security, s.run_as_user)).collect();
    assert_eq!(
        got,
        [
            (PodSecurity::Restricted, None),
            (PodSecurity::Baseline, Some(0)),
            (PodSecurity::Privileged, None),
            (PodSecurity::Restricted, Some(65532))
        ]
    );
}

#[test]
fn bad_pod_security_values_name_the_field_and_quote_only_a_prefix() {
    let mut level = template("a");
    level.pod_security = Some("root".repeat(1000));
    let mut negative = template("b");
    negative.run_as_user = Some(-1);
    let mut too_large = template("c");
    too_large.run_as_user = Some(i64::from(i32::MAX) + 1);
    let mut root = template("d");
    root.run_as_user = Some(0);
    let errs = errors_of(&[level, negative, too_large, root]);
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(
        errs[0].starts_with("tasks[0].podSecurity: \"rootroot") && errs[0].contains("(4000 bytes) is not one of restricted"),
        "{errs:?}"
    );
    assert!(errs[0].len() < 200, "the error quotes a short prefix: {}", errs[0]);
    assert_eq!(errs[1], "tasks[1].runAsUser: -1 must be between 0 and 2147483647");
    assert_eq!(errs[2], "tasks[2].runAsUser: 2147483648 must be between 0 and 2147483647");
    assert!(errs[3].starts_with("tasks[3].runAsUser: 0 is root, which podSecurity restricted forbids"), "{errs:?}");
}

#[test]
fn specs_and_templates_without_pod_security_serialize_as_before_it_existed() {
    // Stored entries, snapshots and request digests were written without these fields.
    let spec = expand("q", "s", &[template("a")], &SubmitLimits::default()).unwrap().remove(0);
    let json = serde_json::to_value(&spec).unwrap();
    assert!(json.get("pod_security").is_none() && json.get("run_as_user").is_none(), "{json}");
    let mut old = json.clone();
    old.as_object_mut().unwrap().remove("pod_security");
    assert_eq!(serde_json::from_value::<TaskSpec>(old).unwrap(), spec, "an old spec reads as restricted");
    let template_json = serde_json::to_value(template("a")).unwrap();
    assert!(template_json.get("podSecurity").is_none() && template_json.get("runAsUser").is_none(), "{template_json}");
    let mut baseline = spec.clone();
    baseline.pod_security = PodSecurity::Baseline;
    let round: TaskSpec = serde_json::from_str(&serde_json::to_string(&baseline).unwrap()).unwrap();
    assert_eq!(round.pod_security, PodSecurity::Baseline);
}

#[test]
fn numbers_in_resource_maps_read_as_quantities() {
    let f = TaskFile::from_yaml("tasks:\n  - name: x\n    image: i\n    resources: {cpu: 1.5, memory: 1024, nvidia.com/gpu: 2}\n").unwrap();
    let specs = expand("q", "s", &f.tasks, &SubmitLimits::default()).unwrap();
    assert_eq!(specs[0].resources, Resources::new(1500, 1024, 2));
}

#[test]
fn a_runtime_class_is_kept_and_a_bad_one_names_the_field() {
    let f = TaskFile::from_yaml("tasks:\n  - {name: a, image: i, resources: {cpu: 1}, runtimeClass: gvisor}\n").unwrap();
    let specs = expand("q", "s", &f.tasks, &SubmitLimits::default()).unwrap();
    assert_eq!(specs[0].runtime_class.as_deref(), Some("gvisor"));
    let json = serde_json::to_value(&expand("q", "s", &[template("b")], &SubmitLimits::default()).unwrap()[0]).unwrap();
    assert!(json.get("runtime_class").is_none(), "not written when unset: {json}");
    let mut bad = template("c");
    bad.runtime_class = Some("G Visor".into());
    assert_eq!(
        errors_of(&[bad]),
        vec!["tasks[0].runtimeClass: \"G Visor\" is not a valid name (lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"]
    );
}

#[test]
fn progress_deadline_is_a_duration_between_5s_and_7d_and_sim_progress_fields_are_positive_durations() {
    let with = |deadline: &str| TaskTemplate { progress_deadline: Some(deadline.into()), ..template("a") };
    let ok = expand("q", "s", &[with("10m")], &SubmitLimits::default()).unwrap();
    assert_eq!(ok[0].progress_deadline_ms, Some(600_000));
    assert_eq!(expand("q", "s", &[template("a")], &SubmitLimits::default()).unwrap()[0].progress_deadline_ms, None);
    for (bad, problem) in [("4s", "between 5s and 7d"), ("8d", "between 5s and 7d"), ("soon", "not a duration")] {
        let errors = errors_of(&[with(bad)]);
        assert!(errors.iter().any(|e| e.contains("tasks[0].progressDeadline") && e.contains(problem)), "{bad}: {errors:?}");
    }
    let sim = SimTemplate { progress_every: Some("0s".into()), stall_after: Some("x".into()), ..Default::default() };
    let errors = errors_of(&[TaskTemplate { sim: Some(sim), ..template("a") }]);
    assert!(errors.iter().any(|e| e.contains("sim.progressEvery") && e.contains("longer than zero")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("sim.stallAfter")), "{errors:?}");
}

#[test]
fn affinity_and_a_same_value_of_gang_expand_into_the_spec() {
    let text = r#"
tasks:
  - name: train
    image: i
    resources: {cpu: 1}
    gang: {size: 4, sameValueOf: cloud.google.com/gke-nodepool}
    affinity:
      required:
        - {key: cloud.google.com/gke-nodepool, operator: In, values: [a100-pool, h100-pool]}
        - {key: example.com/broken, operator: DoesNotExist}
      preferred:
        - {weight: 50, key: topology.kubernetes.io/zone, operator: In, values: [us-east-1a]}
"#;
    let f = TaskFile::from_yaml(text).unwrap();
    let specs = expand("q", "s", &f.tasks, &SubmitLimits::default()).unwrap();
    assert_eq!(specs.len(), 4);
    let gang = specs[3].gang.as_ref().unwrap();
    assert_eq!(gang.same_value_of.as_deref(), Some("cloud.google.com/gke-nodepool"));
    assert_eq!(gang.topology, TopologyLevel::Cluster);
    let a = &specs[0].placement.affinity;
    assert_eq!(
        a.required,
        vec![
            NodeRequirement {
                key: "cloud.google.com/gke-nodepool".into(),
                operator: AffinityOperator::In,
                values: vec!["a100-pool".into(), "h100-pool".into()]
            },
            NodeRequirement { key: "example.com/broken".into(), operator: AffinityOperator::DoesNotExist, values: vec![] },
        ]
    );
    assert_eq!(a.preferred.len(), 1);
    assert_eq!(a.preferred[0].weight, 50);
    assert_eq!(a.preferred[0].requirement.values, vec!["us-east-1a".to_string()]);
}

#[test]
fn a_spec_without_affinity_or_same_value_of_serializes_as_before() {
    let specs = expand("q", "s", &[template("a")], &SubmitLimits::default()).unwrap();
    let json = serde_json::to_string(&specs[0]).unwrap();
    assert!(!json.contains("affinity") && !json.contains("same_value_of"), "{json}");
    let t = serde_json::to_string(&template("a")).unwrap();
    assert!(!t.contains("affinity"), "{t}");
}

fn affinity_errors(yaml: &str) -> Vec<String> {
    let text = format!("tasks:\n  - name: a\n    image: i\n    resources: {{cpu: 1}}\n{yaml}");
    let f = TaskFile::from_yaml(&text).unwrap();
    errors_of(&f.tasks)
}

#[test]
fn bad_affinity_expressions_are_rejected_with_their_field_paths() {
    let cases = [
        ("    affinity: {required: [{key: zone, operator: In}]}\n", "tasks[0].affinity.required[0].values: In needs at least one value"),
        ("    affinity: {required: [{key: zone, operator: NotIn, values: []}]}\n", "tasks[0].affinity.required[0].values: NotIn needs"),
        (
            "    affinity: {required: [{key: zone, operator: Exists, values: [a]}]}\n",
            "tasks[0].affinity.required[0].values: Exists takes no values",
        ),
        (
            "    affinity: {required: [{key: zone, operator: Exists}, {key: z, operator: DoesNotExist, values: [a]}]}\n",
            "tasks[0].affinity.required[1].values: DoesNotExist takes no values",
        ),
        (
            "    affinity: {required: [{key: zone, operator: Gt, values: [a]}]}\n",
            "tasks[0].affinity.required[0].operator: \"Gt\" is not one of",
        ),
        (
            "    affinity: {required: [{key: \"-bad\", operator: Exists}]}\n",
            "tasks[0].affinity.required[0].key: \"-bad\" is not a valid label key",
        ),
        (
            "    affinity: {required: [{key: zone, operator: In, values: [\"a b\"]}]}\n",
            "tasks[0].affinity.required[0].values: \"a b\" is not a valid label value",
        ),
        (
            "    affinity: {preferred: [{weight: 0, key: zone, operator: Exists}]}\n",
            "tasks[0].affinity.preferred[0].weight: 0 is not between 1 and 100",
        ),
        (
            "    affinity: {preferred: [{weight: 101, key: zone, operator: Exists}]}\n",
            "tasks[0].affinity.preferred[0].weight: 101 is not between 1 and 100",
        ),
        (
            "    affinity: {preferred: [{weight: 5, key: zone, operator: In}]}\n",
            "tasks[0].affinity.preferred[0].values: In needs at least one value",
        ),
        (
            "    gang: {size: 2, topology: rack, sameValueOf: pool}\n",
            "tasks[0].gang.sameValueOf: cannot be combined with tasks[0].gang.topology",
        ),
        ("    gang: {size: 2, sameValueOf: \"Not A Key\"}\n", "tasks[0].gang.sameValueOf: \"Not A Key\" is not a valid label key"),
    ];
    for (yaml, want) in cases {
        let errors = affinity_errors(yaml);
        assert!(errors.iter().any(|e| e.starts_with(want)), "{yaml}: want {want}, got {errors:?}");
    }
}

#[test]
fn affinity_bounds_are_enforced_and_long_values_are_quoted_only_by_a_prefix() {
    let many = (0..17).map(|i| format!("{{key: k{i}, operator: Exists}}")).collect::<Vec<_>>().join(", ");
    let errors = affinity_errors(&format!("    affinity: {{required: [{many}]}}\n"));
    assert!(errors.iter().any(|e| e.starts_with("tasks[0].affinity.required: 17 expressions exceed the limit of 16")), "{errors:?}");
    let errors = affinity_errors(&format!("    affinity: {{preferred: [{}]}}\n", many.replace("{key", "{weight: 1, key")));
    assert!(errors.iter().any(|e| e.starts_with("tasks[0].affinity.preferred: 17 expressions exceed the limit of 16")), "{errors:?}");
    let values = (0..17).map(|i| format!("v{i}")).collect::<Vec<_>>().join(", ");
    let errors = affinity_errors(&format!("    affinity: {{required: [{{key: k, operator: In, values: [{values}]}}]}}\n"));
    assert!(errors.iter().any(|e| e.starts_with("tasks[0].affinity.required[0].values: 17 values exceed the limit of 16")), "{errors:?}");
    let long = "v".repeat(10_000);
    let errors = affinity_errors(&format!("    affinity: {{required: [{{key: k, operator: In, values: [{long}]}}]}}\n"));
    let e = errors.iter().find(|e| e.starts_with("tasks[0].affinity.required[0].values:")).expect("an error for the long value");
    assert!(e.len() < 200, "the error quotes only a prefix: {e}");
    let errors = affinity_errors(&format!("    affinity: {{required: [{{key: {long}, operator: Exists}}]}}\n"));
    assert!(errors.iter().any(|e| e.starts_with("tasks[0].affinity.required[0].key:") && e.len() < 200), "{errors:?}");
}
