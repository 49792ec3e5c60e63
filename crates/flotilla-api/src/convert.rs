//! Conversions between wire messages and model types.

use flotilla_model as m;

use crate::v1;

impl From<&m::Resources> for v1::ResourceAmounts {
    fn from(r: &m::Resources) -> Self {
        v1::ResourceAmounts {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpu: r.gpu,
            extended: r.extended.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

impl From<&v1::ResourceAmounts> for m::Resources {
    fn from(r: &v1::ResourceAmounts) -> Self {
        m::Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpu: r.gpu,
            extended: r.extended.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

fn opt(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

/// A wire template as the model's template (the shape the validator checks).
pub fn template_from_proto(t: &v1::TaskTemplate) -> m::TaskTemplate {
    m::TaskTemplate {
        name: t.name.clone(),
        count: t.count,
        priority_class: opt(&t.priority_class),
        image: t.image.clone(),
        command: t.command.clone(),
        args: t.args.clone(),
        env: t.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        resources: t.resources.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        limits: t.limits.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        retry: t.retry.as_ref().map(|r| m::RetryTemplate {
            max_attempts: r.max_attempts,
            backoff: opt(&r.backoff),
            max_backoff: opt(&r.max_backoff),
            oom_memory_growth: r.oom_memory_growth,
        }),
        checkpoint: t.checkpoint,
        max_runtime: opt(&t.max_runtime),
        pending_timeout: opt(&t.pending_timeout),
        runtime_class: opt(&t.runtime_class),
        termination_grace: opt(&t.termination_grace),
        gang: t.gang.as_ref().map(|g| m::GangTemplate {
            size: g.size,
            topology: opt(&g.topology),
            same_value_of: opt(&g.same_value_of),
            group: opt(&g.group),
            role: opt(&g.role),
            leader: g.leader,
        }),
        placement: t.placement.as_ref().map(|p| m::PlacementTemplate {
            gpu_model: opt(&p.gpu_model),
            clusters: p.clusters.clone(),
            preferred_cluster: opt(&p.preferred_cluster),
            node_selector: p.node_selector.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            tolerations: p
                .tolerations
                .iter()
                .map(|t| m::Toleration {
                    key: t.key.clone(),
                    operator: if t.operator.is_empty() { "Equal".into() } else { t.operator.clone() },
                    value: t.value.clone(),
                    effect: t.effect.clone(),
                })
                .collect(),
            spot: opt(&p.spot),
        }),
        after: t.after.clone(),
        sim: t.sim.as_ref().map(|s| m::SimTemplate {
            duration: opt(&s.duration),
            exit_code: s.exit_code,
            memory_peak: opt(&s.memory_peak),
            progress_every: opt(&s.progress_every),
            stall_after: opt(&s.stall_after),
        }),
        pod_security: opt(&t.pod_security),
        run_as_user: t.run_as_user,
        progress_deadline: opt(&t.progress_deadline),
        affinity: t.affinity.as_ref().map(|a| m::AffinityTemplate {
            required: a
                .required
                .iter()
                .map(|r| m::RequirementTemplate { key: r.key.clone(), operator: r.operator.clone(), values: r.values.clone() })
                .collect(),
            preferred: a
                .preferred
                .iter()
                .map(|r| m::PreferredTemplate {
                    weight: i64::from(r.weight),
                    key: r.key.clone(),
                    operator: r.operator.clone(),
                    values: r.values.clone(),
                })
                .collect(),
        }),
    }
}

/// A model template (read from a task file) as a wire template.
pub fn template_to_proto(t: &m::TaskTemplate) -> v1::TaskTemplate {
    v1::TaskTemplate {
        name: t.name.clone(),
        count: t.count,
        priority_class: t.priority_class.clone().unwrap_or_default(),
        image: t.image.clone(),
        command: t.command.clone(),
        args: t.args.clone(),
        env: t.env.clone().into_iter().collect(),
        resources: t.resources.clone().into_iter().collect(),
        limits: t.limits.clone().into_iter().collect(),
        retry: t.retry.as_ref().map(|r| v1::RetryTemplate {
            max_attempts: r.max_attempts,
            backoff: r.backoff.clone().unwrap_or_default(),
            max_backoff: r.max_backoff.clone().unwrap_or_default(),
            oom_memory_growth: r.oom_memory_growth,
        }),
        checkpoint: t.checkpoint,
        max_runtime: t.max_runtime.clone().unwrap_or_default(),
        pending_timeout: t.pending_timeout.clone().unwrap_or_default(),
        runtime_class: t.runtime_class.clone().unwrap_or_default(),
        termination_grace: t.termination_grace.clone().unwrap_or_default(),
        gang: t.gang.as_ref().map(|g| v1::GangTemplate {
            size: g.size,
            topology: g.topology.clone().unwrap_or_default(),
            same_value_of: g.same_value_of.clone().unwrap_or_default(),
            group: g.group.clone().unwrap_or_default(),
            role: g.role.clone().unwrap_or_default(),
            leader: g.leader,
        }),
        placement: t.placement.as_ref().map(|p| v1::PlacementTemplate {
            gpu_model: p.gpu_model.clone().unwrap_or_default(),
            clusters: p.clusters.clone(),
            preferred_cluster: p.preferred_cluster.clone().unwrap_or_default(),
            node_selector: p.node_selector.clone().into_iter().collect(),
            tolerations: p
                .tolerations
                .iter()
                .map(|t| v1::Toleration {
                    key: t.key.clone(),
                    operator: t.operator.clone(),
                    value: t.value.clone(),
                    effect: t.effect.clone(),
                })
                .collect(),
            spot: p.spot.clone().unwrap_or_default(),
        }),
        after: t.after.clone(),
        sim: t.sim.as_ref().map(|s| v1::SimTemplate {
            duration: s.duration.clone().unwrap_or_default(),
            exit_code: s.exit_code,
            memory_peak: s.memory_peak.clone().unwrap_or_default(),
            progress_every: s.progress_every.clone().unwrap_or_default(),
            stall_after: s.stall_after.clone().unwrap_or_default(),
        }),
        pod_security: t.pod_security.clone().unwrap_or_default(),
        run_as_user: t.run_as_user,
        progress_deadline: t.progress_deadline.clone().unwrap_or_default(),
        affinity: t.affinity.as_ref().map(|a| v1::NodeAffinity {
            required: a.required.iter().map(|r| term(&r.key, &r.operator, &r.values, 0)).collect(),
            // Out-of-range weights stay out of range (clamped into i32) so the server rejects them.
            preferred: a
                .preferred
                .iter()
                .map(|r| term(&r.key, &r.operator, &r.values, r.weight.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32))
                .collect(),
        }),
    }
}

fn term(key: &str, operator: &str, values: &[String], weight: i32) -> v1::AffinityTerm {
    v1::AffinityTerm { key: key.to_string(), operator: operator.to_string(), values: values.to_vec(), weight }
}

/// A queue's per-class limit as the wire carries it.
pub fn class_limit_to_proto(l: &m::ClassLimit) -> v1::PriorityClassLimit {
    use v1::priority_class_limit::Max;
    v1::PriorityClassLimit {
        priority_class: l.priority_class.clone(),
        resource: l.resource.as_str().to_string(),
        max: Some(match l.max {
            m::LimitMax::Amount(a) => Max::Amount(l.resource.format_amount(a)),
            m::LimitMax::PoolFraction(f) => Max::PoolFraction(f),
        }),
    }
}

/// A wire per-class limit (`path` names it in errors) as the model's. The amount is parsed
/// here; the rest is checked with the queue's other limits (`check_class_limits`).
pub fn class_limit_from_proto(path: &str, l: &v1::PriorityClassLimit) -> Result<m::ClassLimit, m::FieldError> {
    use v1::priority_class_limit::Max;
    let resource = m::LimitResource::parse(&l.resource).map_err(|e| m::FieldError::new(format!("{path}.resource"), e))?;
    let max = match &l.max {
        Some(Max::Amount(a)) => m::LimitMax::Amount(resource.parse_amount(a).map_err(|e| m::FieldError::new(format!("{path}.amount"), e))?),
        Some(Max::PoolFraction(f)) => m::LimitMax::PoolFraction(*f),
        None => return Err(m::FieldError::new(path, "needs an amount or a poolFraction")),
    };
    Ok(m::ClassLimit { priority_class: l.priority_class.clone(), resource, max })
}

/// A validated node affinity as the executor receives it.
pub fn affinity_to_proto(a: &m::NodeAffinity) -> Option<v1::NodeAffinity> {
    (!a.is_empty()).then(|| v1::NodeAffinity {
        required: a.required.iter().map(|r| term(&r.key, r.operator.as_str(), &r.values, 0)).collect(),
        preferred: a
            .preferred
            .iter()
            .map(|p| term(&p.requirement.key, p.requirement.operator.as_str(), &p.requirement.values, p.weight as i32))
            .collect(),
    })
}

/// A node report from an executor as a model node of `cluster`.
pub fn node_from_report(cluster: &str, n: &v1::NodeReport) -> m::Node {
    m::Node {
        cluster: cluster.to_string(),
        name: n.name.clone(),
        allocatable: n.allocatable.as_ref().map(m::Resources::from).unwrap_or_default(),
        reserved: n.reserved.as_ref().map(m::Resources::from).unwrap_or_default(),
        topology: m::Topology { region: n.region.clone(), zone: n.zone.clone(), rack: n.rack.clone() },
        gpu_model: opt(&n.gpu_model),
        instance_type: n.instance_type.clone(),
        spot: n.spot,
        price_per_hour_usd: if n.price_per_hour_usd.is_finite() && n.price_per_hour_usd >= 0.0 { n.price_per_hour_usd } else { 0.0 },
        labels: n.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        taints: n.taints.iter().map(|t| m::Taint { key: t.key.clone(), value: t.value.clone(), effect: t.effect.clone() }).collect(),
        unschedulable: n.unschedulable,
    }
}

/// A model node as the report an executor sends.
pub fn node_to_report(n: &m::Node) -> v1::NodeReport {
    v1::NodeReport {
        name: n.name.clone(),
        allocatable: Some((&n.allocatable).into()),
        reserved: Some((&n.reserved).into()),
        region: n.topology.region.clone(),
        zone: n.topology.zone.clone(),
        rack: n.topology.rack.clone(),
        gpu_model: n.gpu_model.clone().unwrap_or_default(),
        instance_type: n.instance_type.clone(),
        spot: n.spot,
        price_per_hour_usd: n.price_per_hour_usd,
        labels: n.labels.clone().into_iter().collect(),
        taints: n.taints.iter().map(|t| v1::Taint { key: t.key.clone(), value: t.value.clone(), effect: t.effect.clone() }).collect(),
        unschedulable: n.unschedulable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_survive_a_round_trip_through_the_wire() {
        let file = m::TaskFile::from_yaml(
            "tasks:\n  - name: train\n    image: i\n    gang: {size: 8, topology: rack}\n    resources: {cpu: 32, nvidia.com/gpu: 8}\n    placement: {gpuModel: H100, spot: never, tolerations: [{key: gpu, operator: Exists}]}\n    retry: {maxAttempts: 5, backoff: 30s, oomMemoryGrowth: 1.5}\n    sim: {duration: 20s, exitCode: 3}\n    podSecurity: baseline\n    runAsUser: 0\n    affinity: {required: [{key: pool, operator: In, values: [a, b]}, {key: bad, operator: DoesNotExist}], preferred: [{weight: 40, key: zone, operator: Exists}]}\n",
        )
        .unwrap();
        let t = &file.tasks[0];
        assert_eq!(&template_from_proto(&template_to_proto(t)), t);
    }

    #[test]
    fn a_same_value_of_gang_survives_a_round_trip_through_the_wire() {
        let file =
            m::TaskFile::from_yaml("tasks:\n  - name: t\n    image: i\n    gang: {size: 4, sameValueOf: example.com/nvlink}\n").unwrap();
        let t = &file.tasks[0];
        assert_eq!(template_to_proto(t).gang.unwrap().same_value_of, "example.com/nvlink");
        assert_eq!(&template_from_proto(&template_to_proto(t)), t);
    }

    #[test]
    fn nodes_survive_a_round_trip_through_the_wire() {
        let n = m::Node {
            cluster: "eks".into(),
            name: "n1".into(),
            allocatable: m::Resources::new(96_000, 1 << 40, 8),
            reserved: m::Resources::new(500, 1 << 30, 0),
            topology: m::Topology { region: "us-east-1".into(), zone: "us-east-1a".into(), rack: "r1".into() },
            gpu_model: Some("H100".into()),
            instance_type: "p5.48xlarge".into(),
            spot: true,
            price_per_hour_usd: 12.5,
            labels: [("a".to_string(), "b".to_string())].into(),
            taints: vec![m::Taint { key: "k".into(), value: "v".into(), effect: "NoSchedule".into() }],
            unschedulable: false,
        };
        assert_eq!(node_from_report("eks", &node_to_report(&n)), n);
    }
}
