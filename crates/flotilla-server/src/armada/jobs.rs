//! Armada job requests as Flotilla task templates: pure translation, no I/O.
//!
//! One job request item becomes one `flotilla.v1.TaskTemplate` named `job-<item index>`;
//! items sharing an `armadaproject.io/gangId` become one template with a gang. Every field
//! Flotilla cannot honour is refused with a [`FieldError`] naming it, never dropped, so the
//! caller learns at submit time rather than from a task that runs differently.

use std::collections::BTreeMap;

use flotilla_api::armada::api::JobSubmitRequestItem;
use flotilla_api::armada::k8s::io::api::core::v1 as k8s;
use flotilla_api::v1;
use flotilla_model::{quote, FieldError};

pub const GANG_ID: &str = "armadaproject.io/gangId";
pub const GANG_CARDINALITY: &str = "armadaproject.io/gangCardinality";
pub const GANG_UNIFORMITY_LABEL: &str = "armadaproject.io/gangNodeUniformityLabel";
/// Flotilla's own annotations: what a simulated cluster (`flotilla dev`) does with the job.
pub const SIM_DURATION: &str = "flotilla.io/sim-duration";
pub const SIM_EXIT_CODE: &str = "flotilla.io/sim-exit-code";
/// Flotilla's retry limit for the job (Armada has no per-job equivalent).
pub const MAX_ATTEMPTS: &str = "flotilla.io/max-attempts";

/// The priority values Armada's clients send by default (0, and 1 from `create_job_request_item`).
/// Flotilla orders a queue by priority class, then submit time: any other value would be ignored,
/// so it is refused instead.
const ACCEPTED_PRIORITIES: [f64; 2] = [0.0, 1.0];

/// Armada's usual priority class names, and the built-in Flotilla class each stands for.
const PRIORITY_CLASS_ALIASES: [(&str, &str); 2] = [("armada-default", "default"), ("armada-preemptible", "best-effort")];

/// A request's templates and, per job request item, where its task id will be.
#[derive(Debug, PartialEq)]
pub struct Translation {
    pub templates: Vec<v1::TaskTemplate>,
    /// Item i's task is task number `slots[i]` of the submission (a gang's members are
    /// consecutive tasks of its template).
    pub slots: Vec<usize>,
    /// For each template, the first item it came from: to name items in Flotilla's errors.
    pub first_item: Vec<usize>,
}

/// Translates every item; any error rejects the whole request.
pub fn translate(items: &[JobSubmitRequestItem]) -> Result<Translation, Vec<FieldError>> {
    let mut errors = Vec::new();
    let templates: Vec<Option<v1::TaskTemplate>> =
        items.iter().enumerate().map(|(i, item)| template_of(&format!("job_request_items[{i}]"), i, item, &mut errors)).collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let templates: Vec<v1::TaskTemplate> = templates.into_iter().flatten().collect();
    let t = group_gangs(items, templates, &mut errors);
    if errors.is_empty() {
        Ok(t)
    } else {
        Err(errors)
    }
}

fn unsupported(errors: &mut Vec<FieldError>, path: &str, fields: &[(&str, bool)]) {
    for (field, set) in fields {
        if *set {
            errors.push(FieldError::new(format!("{path}.{field}"), "is not supported by Flotilla (see docs/armada.md)"));
        }
    }
}

fn template_of(path: &str, index: usize, item: &JobSubmitRequestItem, errors: &mut Vec<FieldError>) -> Option<v1::TaskTemplate> {
    if !ACCEPTED_PRIORITIES.contains(&item.priority) {
        errors.push(FieldError::new(
            format!("{path}.priority"),
            format!(
                "{} is not supported: Flotilla orders a queue by priority class, then submit time (use priorityClassName)",
                item.priority
            ),
        ));
    }
    if !(item.namespace.is_empty() || item.namespace == "default") {
        errors.push(FieldError::new(
            format!("{path}.namespace"),
            format!(
                "{} is not supported: the executor runs a queue's tasks in the namespace it derives from the queue",
                quote(&item.namespace)
            ),
        ));
    }
    unsupported(
        errors,
        path,
        &[
            ("labels", !item.labels.is_empty()),
            ("ingress", !item.ingress.is_empty()),
            ("services", !item.services.is_empty()),
            ("scheduler", !item.scheduler.is_empty()),
            ("external_job_uri", !item.external_job_uri.is_empty()),
        ],
    );
    let pod = match (&item.pod_spec, item.pod_specs.as_slice()) {
        (Some(p), []) => (p, format!("{path}.pod_spec")),
        (None, [p]) => (p, format!("{path}.pod_specs[0]")),
        (None, []) => {
            errors.push(FieldError::new(format!("{path}.pod_spec"), "is required"));
            return None;
        }
        _ => {
            errors
                .push(FieldError::new(format!("{path}.pod_specs"), "Flotilla runs one pod per job: give pod_spec or one pod_specs entry"));
            return None;
        }
    };
    let mut t = pod_template(&pod.1, pod.0, errors)?;
    t.name = format!("job-{index}");
    if let Some(p) = t.placement.as_mut() {
        p.node_selector.extend(item.required_node_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    annotations(path, &item.annotations, &mut t, errors);
    Some(t)
}

/// The job's pod spec as a template: its one container, resources, placement and timings.
fn pod_template(path: &str, p: &k8s::PodSpec, errors: &mut Vec<FieldError>) -> Option<v1::TaskTemplate> {
    unsupported(
        errors,
        path,
        &[
            ("volumes", !p.volumes.is_empty()),
            ("initContainers", !p.init_containers.is_empty()),
            ("ephemeralContainers", !p.ephemeral_containers.is_empty()),
            ("dnsPolicy", !p.dns_policy.is_empty()),
            ("serviceAccountName", !p.service_account_name.is_empty()),
            ("serviceAccount", !p.service_account.is_empty()),
            ("automountServiceAccountToken", p.automount_service_account_token.is_some()),
            ("nodeName", !p.node_name.is_empty()),
            ("hostNetwork", p.host_network),
            ("hostPID", p.host_pid),
            ("hostIPC", p.host_ipc),
            ("shareProcessNamespace", p.share_process_namespace.is_some()),
            ("imagePullSecrets", !p.image_pull_secrets.is_empty()),
            ("hostname", !p.hostname.is_empty()),
            ("subdomain", !p.subdomain.is_empty()),
            ("affinity", !p.affinity.is_empty()),
            ("schedulerName", !p.scheduler_name.is_empty()),
            ("hostAliases", !p.host_aliases.is_empty()),
            ("priority", p.priority.is_some()),
            ("dnsConfig", !p.dns_config.is_empty()),
            ("readinessGates", !p.readiness_gates.is_empty()),
            ("runtimeClassName", !p.runtime_class_name.is_empty()),
            ("enableServiceLinks", p.enable_service_links.is_some()),
            ("preemptionPolicy", !p.preemption_policy.is_empty()),
            ("overhead", !p.overhead.is_empty()),
            ("topologySpreadConstraints", !p.topology_spread_constraints.is_empty()),
            ("setHostnameAsFQDN", p.set_hostname_as_fqdn.is_some()),
            ("os", !p.os.is_empty()),
            ("hostUsers", p.host_users.is_some()),
            ("schedulingGates", !p.scheduling_gates.is_empty()),
            ("resourceClaims", !p.resource_claims.is_empty()),
            ("resources", !p.resources.is_empty()),
        ],
    );
    if !(p.restart_policy.is_empty() || p.restart_policy == "Never") {
        errors.push(FieldError::new(
            format!("{path}.restartPolicy"),
            format!(
                "{} is not supported: a task's pod never restarts in place; Flotilla retries with a new attempt",
                quote(&p.restart_policy)
            ),
        ));
    }
    let pod_user = pod_security_context(&format!("{path}.securityContext"), p.security_context.as_ref(), errors);
    let container = match p.containers.as_slice() {
        [c] => c,
        [] => {
            errors.push(FieldError::new(format!("{path}.containers"), "one container is required"));
            return None;
        }
        more => {
            errors.push(FieldError::new(
                format!("{path}.containers"),
                format!("has {} containers; Flotilla runs one container per task", more.len()),
            ));
            return None;
        }
    };
    let mut t = container_template(&format!("{path}.containers[0]"), container, errors);
    t.run_as_user = t.run_as_user.or(pod_user);
    t.termination_grace = p.termination_grace_period_seconds.map(|s| format!("{s}s")).unwrap_or_default();
    t.max_runtime = p.active_deadline_seconds.map(|s| format!("{s}s")).unwrap_or_default();
    t.priority_class = PRIORITY_CLASS_ALIASES
        .iter()
        .find(|(armada, _)| *armada == p.priority_class_name)
        .map_or_else(|| p.priority_class_name.clone(), |(_, ours)| ours.to_string());
    t.placement = Some(v1::PlacementTemplate {
        node_selector: p.node_selector.clone(),
        tolerations: p
            .tolerations
            .iter()
            .enumerate()
            .map(|(i, tol)| {
                if tol.toleration_seconds.is_some() {
                    errors.push(FieldError::new(
                        format!("{path}.tolerations[{i}].tolerationSeconds"),
                        "is not supported: a lost node's tasks are requeued by Flotilla",
                    ));
                }
                v1::Toleration {
                    key: tol.key.clone(),
                    operator: tol.operator.clone(),
                    value: tol.value.clone(),
                    effect: tol.effect.clone(),
                }
            })
            .collect(),
        ..Default::default()
    });
    Some(t)
}

fn pod_security_context(path: &str, sc: Option<&k8s::PodSecurityContext>, errors: &mut Vec<FieldError>) -> Option<i64> {
    let sc = sc?;
    unsupported(
        errors,
        path,
        &[
            ("seLinuxOptions", !sc.se_linux_options.is_empty()),
            ("windowsOptions", !sc.windows_options.is_empty()),
            ("runAsGroup", sc.run_as_group.is_some()),
            // runAsNonRoot: true is what Flotilla's restricted pods already require.
            ("runAsNonRoot", sc.run_as_non_root == Some(false)),
            ("supplementalGroups", !sc.supplemental_groups.is_empty()),
            ("supplementalGroupsPolicy", !sc.supplemental_groups_policy.is_empty()),
            ("fsGroup", sc.fs_group.is_some()),
            ("sysctls", !sc.sysctls.is_empty()),
            ("fsGroupChangePolicy", !sc.fs_group_change_policy.is_empty()),
            ("seccompProfile", !sc.seccomp_profile.is_empty()),
            ("appArmorProfile", !sc.app_armor_profile.is_empty()),
            ("seLinuxChangePolicy", !sc.se_linux_change_policy.is_empty()),
        ],
    );
    sc.run_as_user
}

fn container_template(path: &str, c: &k8s::Container, errors: &mut Vec<FieldError>) -> v1::TaskTemplate {
    unsupported(
        errors,
        path,
        &[
            ("workingDir", !c.working_dir.is_empty()),
            ("ports", !c.ports.is_empty()),
            ("envFrom", !c.env_from.is_empty()),
            ("resizePolicy", !c.resize_policy.is_empty()),
            ("restartPolicy", !c.restart_policy.is_empty()),
            ("volumeMounts", !c.volume_mounts.is_empty()),
            ("volumeDevices", !c.volume_devices.is_empty()),
            ("livenessProbe", !c.liveness_probe.is_empty()),
            ("readinessProbe", !c.readiness_probe.is_empty()),
            ("startupProbe", !c.startup_probe.is_empty()),
            ("lifecycle", !c.lifecycle.is_empty()),
            ("terminationMessagePath", !c.termination_message_path.is_empty()),
            ("terminationMessagePolicy", !c.termination_message_policy.is_empty()),
            ("imagePullPolicy", !c.image_pull_policy.is_empty()),
            ("stdin", c.stdin),
            ("stdinOnce", c.stdin_once),
            ("tty", c.tty),
        ],
    );
    let mut env = std::collections::HashMap::new();
    for (i, e) in c.env.iter().enumerate() {
        if !e.value_from.is_empty() {
            errors.push(FieldError::new(format!("{path}.env[{i}].valueFrom"), "is not supported: give the value"));
        }
        env.insert(e.name.clone(), e.value.clone());
    }
    let quantities = |m: &std::collections::HashMap<String, flotilla_api::armada::k8s::io::apimachinery::pkg::api::resource::Quantity>| {
        m.iter().map(|(k, q)| (k.clone(), q.string.clone())).collect()
    };
    let (resources, limits) = match &c.resources {
        Some(r) => {
            unsupported(errors, &format!("{path}.resources"), &[("claims", !r.claims.is_empty())]);
            (quantities(&r.requests), quantities(&r.limits))
        }
        None => Default::default(),
    };
    v1::TaskTemplate {
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        env,
        resources,
        limits,
        run_as_user: container_security_context(&format!("{path}.securityContext"), c.security_context.as_ref(), errors),
        ..Default::default()
    }
}

fn container_security_context(path: &str, sc: Option<&k8s::SecurityContext>, errors: &mut Vec<FieldError>) -> Option<i64> {
    let sc = sc?;
    unsupported(
        errors,
        path,
        &[
            ("capabilities", !sc.capabilities.is_empty()),
            ("privileged", sc.privileged == Some(true)),
            ("seLinuxOptions", !sc.se_linux_options.is_empty()),
            ("windowsOptions", !sc.windows_options.is_empty()),
            ("runAsGroup", sc.run_as_group.is_some()),
            // What Flotilla's restricted pods already do is accepted; its opposite is not.
            ("runAsNonRoot", sc.run_as_non_root == Some(false)),
            ("readOnlyRootFilesystem", sc.read_only_root_filesystem.is_some()),
            ("allowPrivilegeEscalation", sc.allow_privilege_escalation == Some(true)),
            ("procMount", !sc.proc_mount.is_empty()),
            ("seccompProfile", !sc.seccomp_profile.is_empty()),
            ("appArmorProfile", !sc.app_armor_profile.is_empty()),
        ],
    );
    sc.run_as_user
}

/// Gang annotations are read in [`group_gangs`]; Flotilla's own set the retry limit and what
/// a simulated cluster does; any other annotation is refused.
fn annotations(
    path: &str,
    annotations: &std::collections::HashMap<String, String>,
    t: &mut v1::TaskTemplate,
    errors: &mut Vec<FieldError>,
) {
    let sorted: BTreeMap<&String, &String> = annotations.iter().collect();
    for (key, value) in sorted {
        match key.as_str() {
            GANG_ID | GANG_CARDINALITY | GANG_UNIFORMITY_LABEL => {}
            SIM_DURATION => t.sim.get_or_insert_with(Default::default).duration = value.clone(),
            SIM_EXIT_CODE => match value.parse::<i32>() {
                Ok(code) => t.sim.get_or_insert_with(Default::default).exit_code = Some(code),
                Err(_) => errors
                    .push(FieldError::new(format!("{path}.annotations[{SIM_EXIT_CODE}]"), format!("{} is not an exit code", quote(value)))),
            },
            MAX_ATTEMPTS => match value.parse::<u32>() {
                Ok(n) => t.retry.get_or_insert_with(Default::default).max_attempts = Some(n),
                Err(_) => errors.push(FieldError::new(
                    format!("{path}.annotations[{MAX_ATTEMPTS}]"),
                    format!("{} is not a whole number", quote(value)),
                )),
            },
            other => errors.push(FieldError::new(
                format!("{path}.annotations[{}]", flotilla_model::truncate(other, 64)),
                "is not supported: Flotilla reads only the gang annotations and its own flotilla.io/ ones (docs/armada.md)",
            )),
        }
    }
}

/// What one gang's first member said, and the rest of its members so far.
struct Gang {
    template: usize,
    cardinality: u32,
    uniformity: String,
    members: usize,
    first_item: usize,
}

/// Folds the items of each gang into their first member's template (`gang.size` =
/// cardinality) and works out each item's task slot. A gang must arrive whole in one request
/// with alike pod specs: Flotilla's gang is one template of identical members.
fn group_gangs(items: &[JobSubmitRequestItem], templates: Vec<v1::TaskTemplate>, errors: &mut Vec<FieldError>) -> Translation {
    let mut out = Translation { templates: Vec::new(), slots: Vec::new(), first_item: Vec::new() };
    let mut gangs: BTreeMap<String, Gang> = BTreeMap::new();
    let mut next_slot = 0;
    for (i, (item, t)) in items.iter().zip(templates).enumerate() {
        let path = format!("job_request_items[{i}].annotations");
        let Some(id) = item.annotations.get(GANG_ID).filter(|id| !id.is_empty()) else {
            out.slots.push(next_slot);
            next_slot += 1;
            out.templates.push(t);
            out.first_item.push(i);
            continue;
        };
        let cardinality = match item.annotations.get(GANG_CARDINALITY).map(|c| c.parse::<u32>()) {
            Some(Ok(n)) if n >= 1 => n,
            Some(_) => {
                errors.push(FieldError::new(format!("{path}[{GANG_CARDINALITY}]"), "must be a whole number of at least 1"));
                continue;
            }
            None => {
                errors.push(FieldError::new(format!("{path}[{GANG_CARDINALITY}]"), format!("is required with {GANG_ID}")));
                continue;
            }
        };
        let uniformity = item.annotations.get(GANG_UNIFORMITY_LABEL).cloned().unwrap_or_default();
        match gangs.get_mut(id) {
            None => {
                let topology = topology_of(&uniformity).unwrap_or_else(|| {
                    errors.push(FieldError::new(
                        format!("{path}[{GANG_UNIFORMITY_LABEL}]"),
                        format!("{} is not supported: use kubernetes.io/hostname, topology.kubernetes.io/zone, or one of node, rack, zone, cluster", quote(&uniformity)),
                    ));
                    String::new()
                });
                let mut t = t;
                if cardinality >= 2 {
                    t.gang = Some(v1::GangTemplate { size: cardinality, topology, ..Default::default() });
                }
                gangs.insert(id.clone(), Gang { template: out.templates.len(), cardinality, uniformity, members: 1, first_item: i });
                out.slots.push(next_slot);
                next_slot += cardinality as usize;
                out.templates.push(t);
                out.first_item.push(i);
            }
            Some(g) => {
                if g.cardinality != cardinality || g.uniformity != uniformity {
                    errors.push(FieldError::new(
                        path.clone(),
                        format!("gang {} members disagree on {GANG_CARDINALITY} or {GANG_UNIFORMITY_LABEL}", quote(id)),
                    ));
                }
                let first = &out.templates[g.template];
                if first.priority_class != t.priority_class {
                    errors.push(FieldError::new(
                        format!("job_request_items[{i}].priority_class_name"),
                        format!(
                            "{} differs from job_request_items[{}].priority_class_name {} of the same gang: every member of a gang has one priority class",
                            quote(&t.priority_class),
                            g.first_item,
                            quote(&first.priority_class)
                        ),
                    ));
                }
                let alike = v1::TaskTemplate {
                    name: first.name.clone(),
                    gang: first.gang.clone(),
                    priority_class: first.priority_class.clone(),
                    ..t
                };
                if alike != *first {
                    errors.push(FieldError::new(
                        format!("job_request_items[{i}].pod_spec"),
                        format!(
                            "differs from job_request_items[{}] of the same gang: Flotilla's gang members share one spec",
                            g.first_item
                        ),
                    ));
                }
                g.members += 1;
                out.slots.push(out.slots[g.first_item] + g.members - 1);
            }
        }
    }
    for (id, g) in &gangs {
        if g.members != g.cardinality as usize {
            errors.push(FieldError::new(
                format!("job_request_items[{}].annotations[{GANG_CARDINALITY}]", g.first_item),
                format!(
                    "gang {} has {} members in this request but a cardinality of {}: submit a gang whole",
                    quote(id),
                    g.members,
                    g.cardinality
                ),
            ));
        }
    }
    out
}

/// A gang's node-uniformity label as a Flotilla topology level: the domain all members share.
fn topology_of(label: &str) -> Option<String> {
    let level = match label {
        "" => "",
        "kubernetes.io/hostname" => "node",
        "topology.kubernetes.io/zone" => "zone",
        level if flotilla_model::TopologyLevel::parse(level).is_some() => level,
        _ => return None,
    };
    Some(level.to_string())
}

/// Flotilla template fields and the Armada fields they came from (the first path segment).
const ARMADA_PATHS: [(&str, &str); 13] = [
    ("image", "pod_spec.containers[0].image"),
    ("command", "pod_spec.containers[0].command"),
    ("args", "pod_spec.containers[0].args"),
    ("env", "pod_spec.containers[0].env"),
    ("resources", "pod_spec.containers[0].resources.requests"),
    ("limits", "pod_spec.containers[0].resources.limits"),
    ("runAsUser", "pod_spec.containers[0].securityContext.runAsUser"),
    ("priorityClass", "pod_spec.priorityClassName"),
    ("maxRuntime", "pod_spec.activeDeadlineSeconds"),
    ("terminationGrace", "pod_spec.terminationGracePeriodSeconds"),
    ("placement", "pod_spec"),
    ("gang", "annotations[armadaproject.io/gangCardinality]"),
    ("sim", "annotations[flotilla.io/sim-*]"),
];

/// A Flotilla "tasks[N].field…" error line about template N, renamed to the job request item
/// it came from and, where it has one, the Armada field, so the caller reads its own names.
pub fn rename_paths(message: &str, first_item: &[usize]) -> String {
    message.lines().map(|line| rename_line(line, first_item).unwrap_or_else(|| line.to_string())).collect::<Vec<_>>().join("\n")
}

fn rename_line(line: &str, first_item: &[usize]) -> Option<String> {
    let (n, tail) = line.strip_prefix("tasks[")?.split_once(']')?;
    let item = first_item.get(n.parse::<usize>().ok()?)?;
    let field = tail.strip_prefix('.').map(|t| t.split(['.', ':']).next().unwrap_or_default()).unwrap_or_default();
    let tail = match ARMADA_PATHS.iter().find(|(ours, _)| *ours == field) {
        Some((ours, theirs)) => format!(".{theirs}{}", &tail[1 + ours.len()..]),
        None => tail.to_string(),
    };
    Some(format!("job_request_items[{item}]{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::armada::k8s::io::apimachinery::pkg::api::resource::Quantity;

    fn item(image: &str) -> JobSubmitRequestItem {
        let q = |s: &str| Quantity { string: s.into() };
        JobSubmitRequestItem {
            priority: 1.0,
            pod_spec: Some(k8s::PodSpec {
                containers: vec![k8s::Container {
                    name: "main".into(),
                    image: image.into(),
                    args: vec!["sleep".into(), "1".into()],
                    env: vec![k8s::EnvVar { name: "A".into(), value: "1".into(), ..Default::default() }],
                    resources: Some(k8s::ResourceRequirements {
                        requests: [("cpu".to_string(), q("100m")), ("memory".to_string(), q("64Mi"))].into(),
                        limits: [("memory".to_string(), q("64Mi"))].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                node_selector: [("disk".to_string(), "ssd".to_string())].into(),
                priority_class_name: "armada-preemptible".into(),
                active_deadline_seconds: Some(60),
                ..Default::default()
            }),
            required_node_labels: [("zone".to_string(), "a".to_string())].into(),
            ..Default::default()
        }
    }

    fn gang_member(id: &str, cardinality: &str) -> JobSubmitRequestItem {
        let mut i = item("trainer:1");
        i.annotations = [
            (GANG_ID.to_string(), id.to_string()),
            (GANG_CARDINALITY.to_string(), cardinality.to_string()),
            (GANG_UNIFORMITY_LABEL.to_string(), "kubernetes.io/hostname".to_string()),
        ]
        .into();
        i
    }

    #[test]
    fn a_pod_spec_becomes_a_template_with_its_container_resources_placement_and_class() {
        let t = translate(&[item("busybox:1.36")]).unwrap();
        let tpl = &t.templates[0];
        assert_eq!((tpl.name.as_str(), tpl.image.as_str()), ("job-0", "busybox:1.36"));
        assert_eq!(tpl.args, ["sleep", "1"]);
        assert_eq!(tpl.env["A"], "1");
        assert_eq!((tpl.resources["cpu"].as_str(), tpl.limits["memory"].as_str()), ("100m", "64Mi"));
        assert_eq!(tpl.priority_class, "best-effort");
        assert_eq!(tpl.max_runtime, "60s");
        let placement = tpl.placement.as_ref().unwrap();
        assert_eq!((placement.node_selector["disk"].as_str(), placement.node_selector["zone"].as_str()), ("ssd", "a"));
        assert_eq!(t.slots, [0]);
    }

    #[test]
    fn a_second_container_services_and_ingresses_are_refused_naming_the_field() {
        let mut two = item("a");
        let c = two.pod_spec.as_ref().unwrap().containers[0].clone();
        two.pod_spec.as_mut().unwrap().containers.push(c);
        let mut exposed = item("b");
        exposed.services.push(Default::default());
        exposed.ingress.push(Default::default());
        exposed.pod_spec.as_mut().unwrap().volumes.push(vec![1]);
        let errs: Vec<String> = translate(&[two, exposed]).unwrap_err().iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        assert!(errs.iter().any(|e| e.starts_with("job_request_items[0].pod_spec.containers: has 2 containers")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("job_request_items[1].services: is not supported")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("job_request_items[1].ingress: is not supported")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("job_request_items[1].pod_spec.volumes: is not supported")), "{errs:?}");
    }

    #[test]
    fn unknown_annotations_and_priorities_are_refused() {
        let mut i = item("a");
        i.annotations.insert("example.com/x".into(), "y".into());
        i.priority = 5.0;
        let errs: Vec<String> = translate(&[i]).unwrap_err().iter().map(|e| e.path.clone()).collect();
        assert_eq!(errs, ["job_request_items[0].priority", "job_request_items[0].annotations[example.com/x]"]);
    }

    #[test]
    fn gang_members_fold_into_one_gang_template_and_keep_their_slots() {
        let items = [item("solo"), gang_member("g", "2"), item("after"), gang_member("g", "2")];
        let t = translate(&items).unwrap();
        assert_eq!(t.templates.len(), 3);
        let gang = t.templates[1].gang.as_ref().unwrap();
        assert_eq!((gang.size, gang.topology.as_str()), (2, "node"));
        // solo = task 0, the gang = tasks 1 and 2, after = task 3.
        assert_eq!(t.slots, [0, 1, 3, 2]);
        assert_eq!(t.first_item, [0, 1, 2]);
    }

    #[test]
    fn a_gang_not_submitted_whole_or_with_unlike_members_is_refused() {
        let errs = translate(&[gang_member("g", "3"), gang_member("g", "3")]).unwrap_err();
        assert!(errs[0].message.contains("has 2 members in this request but a cardinality of 3"), "{errs:?}");
        let mut other = gang_member("g", "2");
        other.pod_spec.as_mut().unwrap().containers[0].image = "other:1".into();
        let errs = translate(&[gang_member("g", "2"), other]).unwrap_err();
        assert_eq!(errs[0].path, "job_request_items[1].pod_spec");
    }

    #[test]
    fn a_gang_whose_members_name_different_priority_classes_is_refused_naming_both_items() {
        let mut urgent = gang_member("g", "2");
        urgent.pod_spec.as_mut().unwrap().priority_class_name = "urgent".into();
        let errs = translate(&[gang_member("g", "2"), urgent]).unwrap_err();
        assert_eq!(errs.len(), 1, "only the class differs: {errs:?}");
        assert_eq!(errs[0].path, "job_request_items[1].priority_class_name");
        assert!(
            errs[0]
                .message
                .starts_with("\"urgent\" differs from job_request_items[0].priority_class_name \"best-effort\" of the same gang"),
            "{errs:?}"
        );
    }

    #[test]
    fn flotilla_template_errors_are_renamed_to_the_items_they_came_from() {
        let msg = "tasks[1].image: is required\ntasks[0].resources.cpu: bad\ntasks[0].name: odd\nqueue: missing";
        assert_eq!(
            rename_paths(msg, &[0, 3]),
            "job_request_items[3].pod_spec.containers[0].image: is required\n\
             job_request_items[0].pod_spec.containers[0].resources.requests.cpu: bad\n\
             job_request_items[0].name: odd\nqueue: missing"
        );
    }
}
