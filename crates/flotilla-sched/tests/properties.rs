//! Properties of `schedule` over random federations and workloads.
//!
//! proptest draws the sizes and a seed; a small deterministic generator turns them into
//! nodes (mixed GPU models, clusters, racks, zones, spot, taints, labels, cordons),
//! queues (weights including zero, limits, guarantees, disruption budgets), running
//! tasks that fit their nodes, and queued tasks (constraints, priorities, gangs, some
//! incomplete, some of unknown queues).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_model::*;
use flotilla_sched::{schedule, schedule_backlog, Backlog, Config, Decisions, Input, Running};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

/// SplitMix64: deterministic, good enough to spread choices.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const CLUSTERS: [&str; 3] = ["a", "b", "c"];
const MODELS: [&str; 3] = ["H100", "A100", ""];

fn taint() -> Taint {
    Taint { key: "dedicated".into(), value: "x".into(), effect: "NoSchedule".into() }
}

fn random_input(seed: u64, n_nodes: usize, n_queued: usize, n_running: usize, n_queues: usize) -> Input {
    let mut g = Gen(seed);
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n_nodes {
        let model = *g.pick(&MODELS);
        let gpus = if model.is_empty() { 0 } else { *g.pick(&[1u64, 2, 4, 8, 8]) };
        let mut labels = BTreeMap::new();
        if g.chance(30) {
            labels.insert("pool".to_string(), g.pick(&["fast", "slow"]).to_string());
        }
        nodes.push(Node {
            cluster: g.pick(&CLUSTERS).to_string(),
            name: format!("n{i}"),
            allocatable: Resources::new(1_000 * (4 + g.below(60)), GIB * (8 + g.below(500)), gpus),
            reserved: if g.chance(20) { Resources::new(500, GIB, 0) } else { Resources::default() },
            topology: Topology {
                region: "r".into(),
                zone: if g.chance(10) { String::new() } else { format!("z{}", g.below(2)) },
                rack: if g.chance(10) { String::new() } else { format!("r{}", g.below(3)) },
            },
            gpu_model: (!model.is_empty()).then(|| model.to_string()),
            instance_type: String::new(),
            spot: g.chance(30),
            price_per_hour_usd: g.below(50) as f64,
            labels,
            taints: if g.chance(15) { vec![taint()] } else { vec![] },
            unschedulable: g.chance(5),
        });
        if g.chance(30) {
            // The kubelet's maxPods, low enough to bind, with some pods not Flotilla's.
            let node = nodes.last_mut().expect("just pushed");
            node.allocatable.extended.insert(PODS_RESOURCE.to_string(), 1 + g.below(6));
            if g.chance(50) {
                node.reserved.extended.insert(PODS_RESOURCE.to_string(), g.below(3));
            }
        }
    }
    // Names may repeat across clusters; a repeated (cluster, name) is a duplicate report.
    let queues: Vec<Queue> = (0..n_queues)
        .map(|q| {
            let mut queue = Queue::new(format!("q{q}"), *g.pick(&[0.0, 1.0, 2.0, 3.0]));
            if g.chance(30) {
                queue.limit.gpu = Some(g.below(24));
            }
            if g.chance(20) {
                queue.limit.cpu_millis = Some(1_000 * g.below(100));
            }
            if g.chance(30) {
                queue.guarantee = Resources::new(0, 0, g.below(10));
            }
            queue.disruption_budget = g.below(6) as u32;
            if g.chance(40) {
                queue.protected_fraction = Some(*g.pick(&[0.0, 0.25, 0.5, 0.9, 1.0]));
            }
            queue
        })
        .collect();
    let queue_name = |g: &mut Gen| if g.chance(3) { "unknown".to_string() } else { format!("q{}", g.below(n_queues as u64)) };

    let mut next_id = 1u64;
    let mut new_task = |g: &mut Gen, queue: String| {
        let gpus = *g.pick(&[0u64, 1, 1, 2, 4, 8]);
        let mut p = Placement::default();
        if g.chance(20) {
            p.gpu_model = Some(g.pick(&["H100", "A100", "nvidia-h100-80gb", "T4"]).to_string());
        }
        if g.chance(15) {
            p.allowed_clusters = vec![g.pick(&CLUSTERS).to_string()];
        }
        if g.chance(10) {
            p.preferred_cluster = Some(g.pick(&CLUSTERS).to_string());
        }
        if g.chance(10) {
            p.node_selector.insert("pool".into(), g.pick(&["fast", "slow"]).to_string());
        }
        if g.chance(20) {
            p.tolerations =
                vec![Toleration { key: "dedicated".into(), operator: "Exists".into(), value: String::new(), effect: String::new() }];
        }
        p.spot = *g.pick(&[SpotPolicy::Allowed, SpotPolicy::Allowed, SpotPolicy::Required, SpotPolicy::Never]);
        let id = next_id;
        next_id += 1;
        SchedTask {
            id: TaskId(id),
            queue,
            priority: *g.pick(&[0, 100, 100, 1000]),
            preemptible: g.chance(80),
            priority_class: String::new(),
            submit_seq: g.below(1000),
            resources: Resources::new(500 * (1 + g.below(16)), GIB * (1 + g.below(64)), gpus),
            gang: None,
            placement: p,
            avoid_nodes: vec![],
            avoid_clusters: if g.chance(5) { vec![g.pick(&CLUSTERS).to_string()] } else { vec![] },
        }
    };

    // Running tasks only where they fit, so the input itself is never over-committed.
    let mut used: HashMap<usize, Resources> = HashMap::new();
    let mut pods_used: HashMap<usize, u64> = HashMap::new();
    let mut running = Vec::new();
    for _ in 0..n_running {
        if nodes.is_empty() {
            break;
        }
        let queue = queue_name(&mut g);
        let mut t = new_task(&mut g, queue);
        t.placement = Placement::default();
        let ni = g.below(nodes.len() as u64) as usize;
        let n = &nodes[ni];
        let u = used.entry(ni).or_default();
        let pod_room = n
            .allocatable
            .extended
            .get(PODS_RESOURCE)
            .map_or(u64::MAX, |max| max.saturating_sub(n.reserved.extended.get(PODS_RESOURCE).copied().unwrap_or(0)));
        let pods = pods_used.entry(ni).or_insert(0u64);
        if u.plus(&t.resources).fits_in(&n.schedulable_capacity()) && *pods < pod_room {
            u.add(&t.resources);
            *pods += 1;
            running.push(Running { task: t, node: n.node_ref() });
        }
    }
    let mut queued = Vec::new();
    while queued.len() < n_queued {
        let queue = queue_name(&mut g);
        if g.chance(20) {
            let size = 2 + g.below(3) as u32;
            let present = if g.chance(15) { size - 1 } else { size };
            let level = *g.pick(&[TopologyLevel::Node, TopologyLevel::Rack, TopologyLevel::Zone, TopologyLevel::Cluster]);
            let first = new_task(&mut g, queue.clone());
            for rank in 0..present {
                let mut t = first.clone();
                t.id = TaskId(first.id.0 + u64::from(rank) * 10_000);
                t.gang = Some(GangRef { id: first.id, size, rank, topology: level, same_value_of: None, roles: Vec::new() });
                queued.push(t);
            }
        } else {
            queued.push(new_task(&mut g, queue));
        }
    }
    add_affinity(seed, &mut nodes, &mut queued);
    add_roles(seed, &mut queued);
    let mut queues = queues;
    add_class_limits(seed, &mut queues, &mut queued, &mut running);
    let mut config = Config::default();
    if g.chance(30) {
        config.max_evictions_per_cycle = g.below(4) as usize;
    }
    if g.chance(20) {
        config.max_leases_per_cycle = g.below(10) as usize;
    }
    if g.chance(50) {
        config.protected_fraction = *g.pick(&[0.0, 0.5, 0.8]);
    }
    Input { queues, nodes, queued, running, config, held_queues: Default::default() }
}

const AFFINITY_KEYS: [&str; 3] = ["pool", "tier", "block"];
const AFFINITY_VALUES: [&str; 5] = ["fast", "slow", "gold", "silver", "b0"];

/// Node labels `tier` and `block` for affinity terms and `sameValueOf` gangs, random
/// required and preferred terms on some queued tasks, and `sameValueOf: block` on some
/// gangs. Drawn from a generator of their own, so the rest of the input is what it was
/// before affinity existed.
fn add_affinity(seed: u64, nodes: &mut [Node], queued: &mut [SchedTask]) {
    let mut g = Gen(seed ^ 0xA5F1_7E11_0000_0017);
    for n in nodes.iter_mut() {
        if g.chance(50) {
            n.labels.insert("tier".into(), g.pick(&["gold", "silver"]).to_string());
        }
        if g.chance(70) {
            n.labels.insert("block".into(), g.pick(&["b0", "b1", "b2"]).to_string());
        }
    }
    let term = |g: &mut Gen| {
        let operator = *g.pick(&AffinityOperator::ALL);
        let values =
            if operator.takes_values() { (0..1 + g.below(2)).map(|_| g.pick(&AFFINITY_VALUES).to_string()).collect() } else { vec![] };
        NodeRequirement { key: g.pick(&AFFINITY_KEYS).to_string(), operator, values }
    };
    // Gang members share their template: one draw per gang, by gang id.
    let mut per_gang: HashMap<TaskId, (NodeAffinity, Option<String>)> = HashMap::new();
    for t in queued.iter_mut() {
        let draw = |g: &mut Gen, gang: bool| {
            let mut a = NodeAffinity::default();
            if g.chance(20) {
                a.required = (0..1 + g.below(2)).map(|_| term(g)).collect();
            }
            if g.chance(20) {
                a.preferred =
                    (0..1 + g.below(3)).map(|_| PreferredRequirement { weight: 1 + g.below(100) as u32, requirement: term(g) }).collect();
            }
            let label = (gang && g.chance(35)).then(|| "block".to_string());
            (a, label)
        };
        let (affinity, label) = match &t.gang {
            Some(gang) => per_gang.entry(gang.id).or_insert_with(|| draw(&mut g, true)).clone(),
            None => draw(&mut g, false),
        };
        t.placement.affinity = affinity;
        if let Some(gang) = &mut t.gang {
            if label.is_some() {
                gang.topology = TopologyLevel::Cluster;
            }
            gang.same_value_of = label;
        }
    }
}

/// Gangs of several templates: some gangs become a launcher (rank 0, no GPUs, a size of
/// its own) and workers, with roles to match. Drawn from a generator of their own, so the
/// rest of the input is what it was before such gangs existed.
fn add_roles(seed: u64, queued: &mut [SchedTask]) {
    let mut g = Gen(seed ^ 0x6A46_5E75_0000_0007);
    let mut per_gang: HashMap<TaskId, Option<Resources>> = HashMap::new();
    for t in queued.iter_mut() {
        let Some(gang) = &mut t.gang else { continue };
        let launcher = per_gang
            .entry(gang.id)
            .or_insert_with(|| g.chance(40).then(|| Resources::new(500 * (1 + g.below(4)), GIB * (1 + g.below(8)), 0)))
            .clone();
        let Some(launcher) = launcher else { continue };
        gang.roles = vec![GangRole { name: "launcher".into(), count: 1 }, GangRole { name: "worker".into(), count: gang.size - 1 }];
        if gang.rank == 0 {
            t.resources = launcher;
            t.placement.gpu_model = None;
        }
    }
}

/// Priority classes on every task (two classes share priority 100, so one group of the
/// backlog by priority and shape would mix them) and per-class limits on some queues,
/// as amounts or fractions of the pool. Drawn from a generator of their own, like
/// `add_affinity`; gang members share their gang's class.
fn add_class_limits(seed: u64, queues: &mut [Queue], queued: &mut [SchedTask], running: &mut [Running]) {
    let mut g = Gen(seed ^ 0xC1A5_5000_0000_0002);
    let class_of = |g: &mut Gen, priority: i32| match priority {
        0 => "best-effort",
        1000 => "critical",
        _ => *g.pick(&["default", "batch"]),
    };
    let mut per_gang: HashMap<TaskId, &str> = HashMap::new();
    for t in queued.iter_mut() {
        let class = match &t.gang {
            Some(gang) => *per_gang.entry(gang.id).or_insert_with(|| class_of(&mut g, t.priority)),
            None => class_of(&mut g, t.priority),
        };
        t.priority_class = class.to_string();
    }
    for r in running.iter_mut() {
        r.task.priority_class = class_of(&mut g, r.task.priority).to_string();
    }
    for q in queues.iter_mut() {
        if !g.chance(60) {
            continue;
        }
        for _ in 0..1 + g.below(3) {
            let class = g.pick(&["default", "batch", "critical", "best-effort"]).to_string();
            let resource = *g.pick(&[LimitResource::Gpu, LimitResource::Gpu, LimitResource::Cpu, LimitResource::Memory]);
            if q.priority_class_limits.iter().any(|l| l.priority_class == class && l.resource == resource) {
                continue;
            }
            let max = if g.chance(50) {
                LimitMax::PoolFraction(*g.pick(&[0.05, 0.1, 0.25, 0.5, 1.0]))
            } else {
                LimitMax::Amount(match resource {
                    LimitResource::Gpu => g.below(12),
                    LimitResource::Cpu => 1_000 * g.below(40),
                    LimitResource::Memory => GIB * g.below(200),
                })
            };
            q.priority_class_limits.push(ClassLimit { priority_class: class, resource, max });
        }
    }
}

fn inputs() -> impl Strategy<Value = Input> {
    (any::<u64>(), 0usize..20, 0usize..40, 0usize..40, 1usize..5).prop_map(|(s, n, q, r, k)| random_input(s, n, q, r, k))
}

fn node_map(input: &Input) -> HashMap<NodeRef, &Node> {
    let mut m = HashMap::new();
    for n in &input.nodes {
        m.entry(n.node_ref()).or_insert(n);
    }
    m
}

fn queued_by_id(input: &Input) -> HashMap<TaskId, &SchedTask> {
    let mut m = HashMap::new();
    for t in &input.queued {
        m.entry(t.id).or_insert(t);
    }
    m
}

/// Each queue's resources after the cycle, recounted: running - preempted + leased.
/// The decisions of the full cycle and of the backlog cycle over the same input.
fn both_paths(input: &Input) -> [Decisions; 2] {
    let mut backlog = Backlog::default();
    for t in &input.queued {
        backlog.insert(t.clone());
    }
    let lazy = schedule_backlog(&Input { queued: Vec::new(), ..input.clone() }, &backlog);
    [schedule(input), lazy]
}

fn queue_usage(input: &Input, d: &Decisions) -> HashMap<String, Resources> {
    let preempted: BTreeSet<TaskId> = d.preemptions.iter().map(|p| p.task).collect();
    let queued = queued_by_id(input);
    let mut usage: HashMap<String, Resources> = HashMap::new();
    let mut seen = BTreeSet::new();
    for r in &input.running {
        if seen.insert(r.task.id) && !preempted.contains(&r.task.id) {
            usage.entry(r.task.queue.clone()).or_default().add(&r.task.resources);
        }
    }
    for l in &d.leases {
        let t = queued[&l.task];
        usage.entry(t.queue.clone()).or_default().add(&t.resources);
    }
    usage
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn no_node_is_over_committed(input in inputs()) {
        let d = schedule(&input);
        let nodes = node_map(&input);
        let queued = queued_by_id(&input);
        let preempted: BTreeSet<TaskId> = d.preemptions.iter().map(|p| p.task).collect();
        let mut used: HashMap<NodeRef, Resources> = HashMap::new();
        for r in &input.running {
            if !preempted.contains(&r.task.id) {
                used.entry(r.node.clone()).or_default().add(&r.task.resources);
            }
        }
        for l in &d.leases {
            used.entry(l.node.clone()).or_default().add(&queued[&l.task].resources);
        }
        for l in &d.leases {
            let cap = nodes[&l.node].schedulable_capacity();
            prop_assert!(used[&l.node].fits_in(&cap), "{} holds {} of {}", l.node, used[&l.node], cap);
        }
    }

    #[test]
    fn no_node_is_given_more_pods_than_it_runs(input in inputs()) {
        for d in both_paths(&input) {
            let preempted: BTreeSet<TaskId> = d.preemptions.iter().map(|p| p.task).collect();
            let mut pods: HashMap<&NodeRef, u64> = HashMap::new();
            for r in input.running.iter().filter(|r| !preempted.contains(&r.task.id)) {
                *pods.entry(&r.node).or_default() += 1;
            }
            for l in &d.leases {
                *pods.entry(&l.node).or_default() += 1;
            }
            let nodes = node_map(&input);
            for l in &d.leases {
                let n = nodes[&l.node];
                let Some(max) = n.allocatable.extended.get(PODS_RESOURCE) else { continue };
                let others = n.reserved.extended.get(PODS_RESOURCE).copied().unwrap_or(0);
                prop_assert!(pods[&l.node] + others <= *max, "{} runs {} of ours and {others} others' pods of {max}", l.node, pods[&l.node]);
            }
        }
    }

    #[test]
    fn gangs_are_leased_whole_inside_one_domain(input in inputs()) {
        // Gangs of several templates included (`add_roles`): a mixed gang is all placed in
        // one domain or not at all, through both entry points.
        for d in both_paths(&input) {
        let nodes = node_map(&input);
        let queued = queued_by_id(&input);
        let mut gangs: BTreeMap<TaskId, Vec<&NodeRef>> = BTreeMap::new();
        for l in &d.leases {
            if let Some(g) = &queued[&l.task].gang {
                gangs.entry(g.id).or_default().push(&l.node);
            }
        }
        for (id, placed) in gangs {
            let g = input.queued.iter().find_map(|t| t.gang.as_ref().filter(|g| g.id == id)).unwrap();
            prop_assert_eq!(placed.len() as u32, g.size, "gang {} partly leased", id);
            let domain = |r: &NodeRef| {
                let n = nodes[r];
                match g.topology {
                    TopologyLevel::Node => format!("{r}"),
                    TopologyLevel::Rack => format!("{}/{}/{}", n.cluster, n.topology.zone, n.topology.rack),
                    TopologyLevel::Zone => format!("{}/{}", n.cluster, n.topology.zone),
                    TopologyLevel::Cluster => n.cluster.clone(),
                }
            };
            let domains: BTreeSet<String> = placed.iter().map(|r| domain(r)).collect();
            prop_assert_eq!(domains.len(), 1, "gang {} spans {:?}", id, domains);
            // An unlabelled rack or zone is no domain: such a gang stays on one node.
            let unlabelled = |r: &NodeRef| match g.topology {
                TopologyLevel::Rack => nodes[r].topology.rack.is_empty(),
                TopologyLevel::Zone => nodes[r].topology.zone.is_empty(),
                _ => false,
            };
            if placed.iter().any(|r| unlabelled(r)) {
                prop_assert!(placed.iter().all(|r| *r == placed[0]), "gang {} spread over unlabelled nodes", id);
            }
        }
        }
    }

    #[test]
    fn no_placement_violates_a_required_affinity_term(input in inputs()) {
        let nodes = node_map(&input);
        let queued = queued_by_id(&input);
        for d in both_paths(&input) {
            for l in &d.leases {
                let t = queued[&l.task];
                let labels = &nodes[&l.node].labels;
                for r in &t.placement.affinity.required {
                    prop_assert!(r.matches(labels), "task {} on {} breaks {} (labels {:?})", t.id, l.node, r, labels);
                }
            }
        }
    }

    #[test]
    fn every_placed_same_value_of_gang_is_on_one_value_of_its_label_in_one_cluster(input in inputs()) {
        let nodes = node_map(&input);
        let queued = queued_by_id(&input);
        for d in both_paths(&input) {
            // Per gang: its label and the (cluster, label value) pairs its members landed on.
            type Domains = BTreeSet<(String, Option<String>)>;
            let mut gangs: BTreeMap<TaskId, (String, Domains)> = BTreeMap::new();
            for l in &d.leases {
                let Some(g) = &queued[&l.task].gang else { continue };
                let Some(key) = &g.same_value_of else { continue };
                let n = nodes[&l.node];
                let entry = gangs.entry(g.id).or_insert_with(|| (key.clone(), BTreeSet::new()));
                entry.1.insert((n.cluster.clone(), n.labels.get(key).cloned()));
            }
            for (id, (key, domains)) in gangs {
                prop_assert_eq!(domains.len(), 1, "gang {} spans {:?} of label {}", id, domains, key);
                let (_, value) = domains.iter().next().unwrap();
                prop_assert!(value.is_some(), "gang {} placed on nodes without label {}", id, key);
            }
        }
    }

    #[test]
    fn queue_limits_are_never_exceeded(input in inputs()) {
        let d = schedule(&input);
        let usage = queue_usage(&input, &d);
        let queued = queued_by_id(&input);
        let leased_queues: BTreeSet<&str> = d.leases.iter().map(|l| queued[&l.task].queue.as_str()).collect();
        for q in &input.queues {
            if leased_queues.contains(q.name.as_str()) {
                let u = usage.get(&q.name).cloned().unwrap_or_default();
                prop_assert_eq!(q.limit.exceeded_by(&u), None, "queue {} over its limit with {}", q.name, u);
            }
        }
    }

    #[test]
    fn per_class_limits_are_never_exceeded(input in inputs()) {
        // The pool a fraction applies to: what the scheduler counts as the federation.
        let mut pool = Resources::default();
        let mut seen = BTreeSet::new();
        for n in &input.nodes {
            if seen.insert(n.node_ref()) {
                pool.add(&n.schedulable_capacity());
            }
        }
        let queued = queued_by_id(&input);
        for d in both_paths(&input) {
            let preempted: BTreeSet<TaskId> = d.preemptions.iter().map(|p| p.task).collect();
            let mut ids = BTreeSet::new();
            let held_after: Vec<&SchedTask> = input
                .running
                .iter()
                .filter(|r| ids.insert(r.task.id) && !preempted.contains(&r.task.id))
                .map(|r| &r.task)
                .chain(d.leases.iter().map(|l| queued[&l.task]))
                .collect();
            for q in &input.queues {
                for l in &q.priority_class_limits {
                    let max = l.max_of(l.resource.of(&pool));
                    let sum = |tasks: &[&SchedTask]| -> u64 {
                        tasks.iter().filter(|t| t.queue == q.name && t.priority_class == l.priority_class).map(|t| l.resource.of(&t.resources)).sum()
                    };
                    let leased: Vec<&SchedTask> = d.leases.iter().map(|l| queued[&l.task]).collect();
                    let (after, added) = (sum(&held_after), sum(&leased));
                    // Running tasks may be over a limit already (it was lowered); then no
                    // lease adds to them (a task that asks for none of the resource may start).
                    prop_assert!(
                        after <= max || added == 0,
                        "queue {} class {} holds {} {} after the cycle, limit {} ({})", q.name, l.priority_class, after, l.resource.as_str(), max, l
                    );
                }
            }
        }
    }

    #[test]
    fn guarantees_budgets_and_eviction_bounds_hold(input in inputs()) {
        let d = schedule(&input);
        let usage = queue_usage(&input, &d);
        prop_assert!(d.preemptions.len() <= input.config.max_evictions_per_cycle);
        let running: HashMap<TaskId, &SchedTask> = input.running.iter().map(|r| (r.task.id, &r.task)).collect();
        let mut per_queue: HashMap<&str, u32> = HashMap::new();
        let mut seen = BTreeSet::new();
        for p in &d.preemptions {
            prop_assert!(seen.insert(p.task), "task {} preempted twice", p.task);
            let t = running[&p.task];
            prop_assert!(t.preemptible, "non-preemptible task {} evicted", p.task);
            *per_queue.entry(t.queue.as_str()).or_default() += 1;
        }
        for q in &input.queues {
            let n = per_queue.get(q.name.as_str()).copied().unwrap_or(0);
            if n > 0 {
                prop_assert!(n <= q.disruption_budget, "queue {} lost {} > budget {}", q.name, n, q.disruption_budget);
                let u = usage.get(&q.name).cloned().unwrap_or_default();
                prop_assert!(q.guarantee.fits_in(&u), "queue {} preempted to {} below guarantee {}", q.name, u, q.guarantee);
            }
        }
        // A running gang member goes only with its whole gang.
        let preempted: BTreeSet<TaskId> = d.preemptions.iter().map(|p| p.task).collect();
        for r in &input.running {
            if let Some(g) = &r.task.gang {
                let mates = input.running.iter().filter(|o| o.task.gang.as_ref().is_some_and(|og| og.id == g.id));
                for m in mates {
                    prop_assert_eq!(preempted.contains(&m.task.id), preempted.contains(&r.task.id));
                }
            }
        }
    }

    #[test]
    fn fair_share_reclaim_never_takes_a_queue_below_its_protected_share(input in inputs()) {
        let d = schedule(&input);
        let running: HashMap<TaskId, &SchedTask> = input.running.iter().map(|r| (r.task.id, &r.task)).collect();
        // Queues that lost tasks only to reclaim (urgency may take any queue lower).
        let mut reclaimed: BTreeSet<&str> = BTreeSet::new();
        let mut urgent: BTreeSet<&str> = BTreeSet::new();
        for p in &d.preemptions {
            let q = running[&p.task].queue.as_str();
            if p.reason.contains("can reach its fair share") { reclaimed.insert(q) } else { urgent.insert(q) };
        }
        for share in &d.queue_shares {
            if !reclaimed.contains(share.queue.as_str()) || urgent.contains(share.queue.as_str()) {
                continue;
            }
            let q = input.queues.iter().find(|q| q.name == share.queue).unwrap();
            let fraction = q.protected_fraction.unwrap_or(input.config.protected_fraction).clamp(0.0, 1.0);
            prop_assert!(
                share.actual_share + 1e-9 >= fraction * share.fair_share,
                "queue {} reclaimed to {} below {} x its fair share {}", share.queue, share.actual_share, fraction, share.fair_share
            );
        }
    }

    #[test]
    fn placement_constraints_are_never_violated(input in inputs()) {
        let d = schedule(&input);
        let nodes = node_map(&input);
        let queued = queued_by_id(&input);
        for l in &d.leases {
            let (t, n) = (queued[&l.task], nodes[&l.node]);
            let p = &t.placement;
            prop_assert!(!n.unschedulable);
            if let Some(m) = &p.gpu_model {
                let model = n.gpu_model.clone().unwrap_or_default();
                prop_assert!(model == *m || model == normalize_gpu_model(m), "task wants {} on {}", m, model);
            }
            prop_assert!(p.allowed_clusters.is_empty() || p.allowed_clusters.contains(&n.cluster));
            prop_assert!(p.node_selector.iter().all(|(k, v)| n.labels.get(k) == Some(v)));
            prop_assert!(n.tolerated_by(&p.tolerations));
            match p.spot {
                SpotPolicy::Required => prop_assert!(n.spot),
                SpotPolicy::Never => prop_assert!(!n.spot),
                SpotPolicy::Allowed => {}
            }
            prop_assert!(input.queues.iter().any(|q| q.name == t.queue));
        }
    }

    #[test]
    fn every_queued_task_is_leased_or_has_a_reason(input in inputs()) {
        let d = schedule(&input);
        prop_assert!(d.leases.len() <= input.config.max_leases_per_cycle);
        let ids: BTreeSet<TaskId> = input.queued.iter().map(|t| t.id).collect();
        let mut answered = BTreeSet::new();
        for id in d.leases.iter().map(|l| l.task).chain(d.unscheduled.iter().map(|u| u.task)) {
            prop_assert!(answered.insert(id), "task {} answered twice", id);
        }
        prop_assert_eq!(answered, ids);
        prop_assert!(d.unscheduled.iter().all(|u| !u.reason.is_empty()));
        prop_assert_eq!(d.queue_shares.len(), input.queues.len());
        for s in &d.queue_shares {
            prop_assert!((0.0..=1.0).contains(&s.fair_share) && (0.0..=1.0).contains(&s.actual_share), "{:?}", s);
        }
    }

    #[test]
    fn the_same_input_gives_the_same_output(input in inputs()) {
        prop_assert_eq!(schedule(&input), schedule(&input.clone()));
    }

    #[test]
    fn saturating_queues_of_weight_one_and_three_get_a_quarter_and_three_quarters(
        n_nodes in 4usize..24, gpus_each in 1u64..3, seed in any::<u64>()
    ) {
        let mut g = Gen(seed);
        let nodes: Vec<Node> = (0..n_nodes)
            .map(|i| Node {
                cluster: CLUSTERS[i % 3].into(),
                name: format!("n{i}"),
                allocatable: Resources::new(128_000, 1024 * GIB, 8),
                reserved: Resources::default(),
                topology: Topology::default(),
                gpu_model: Some("H100".into()),
                instance_type: String::new(),
                spot: false,
                price_per_hour_usd: g.below(3) as f64,
                labels: BTreeMap::new(),
                taints: vec![],
                unschedulable: false,
            })
            .collect();
        let capacity = n_nodes as u64 * 8;
        let mut queued = Vec::new();
        for i in 0..capacity {
            for (q, offset) in [("one", 0), ("three", 1)] {
                queued.push(SchedTask {
                    id: TaskId(i * 2 + offset),
                    queue: q.into(),
                    priority: 100,
                    preemptible: true,
                    priority_class: "default".into(),
                    submit_seq: g.below(1000),
                    resources: Resources::new(1000, GIB, gpus_each),
                    gang: None,
                    placement: Placement::default(),
                    avoid_nodes: vec![],
                    avoid_clusters: vec![],
                });
            }
        }
        let input = Input { queues: vec![Queue::new("one", 1.0), Queue::new("three", 3.0)], nodes, queued, running: vec![], config: Config::default(), held_queues: Default::default() };
        let d = schedule(&input);
        let share = |i: usize| d.queue_shares[i].allocated.gpu as f64 / capacity as f64;
        prop_assert!((share(0) - 0.25).abs() <= 0.05, "weight 1 got {}", share(0));
        prop_assert!((share(1) - 0.75).abs() <= 0.05, "weight 3 got {}", share(1));
    }
}

/// The same input with at most `k` distinct shapes among the queued tasks (each takes the
/// resources and placement of one of the first `k`), so that the backlog's groups hold
/// many tasks and whole groups are skipped; queued tasks that are also running or listed
/// twice are dropped (the backlog holds each id once, and the leader never queues a
/// running task).
fn few_shapes(mut input: Input, k: usize) -> Input {
    let running: BTreeSet<TaskId> = input.running.iter().map(|r| r.task.id).collect();
    let mut seen = BTreeSet::new();
    input.queued.retain(|t| !running.contains(&t.id) && seen.insert(t.id));
    let templates: Vec<(Resources, Placement)> =
        input.queued.iter().take(k.max(1)).map(|t| (t.resources.clone(), t.placement.clone())).collect();
    // Gang members share their gang's shape choice, so gangs stay as the generator made them.
    for t in input.queued.iter_mut() {
        let pick = t.gang.as_ref().map_or(t.id.0, |g| g.id.0) as usize % templates.len().max(1);
        if let Some((r, p)) = templates.get(pick) {
            t.resources = r.clone();
            t.placement = p.clone();
        }
    }
    input
}

fn many_tasks_few_shapes() -> impl Strategy<Value = Input> {
    (any::<u64>(), 1usize..20, 0usize..400, 0usize..60, 1usize..5, 1usize..6)
        .prop_map(|(s, n, q, r, k, shapes)| few_shapes(random_input(s, n, q, r, k), shapes))
}

/// Leases, preemptions and shares of `schedule_backlog` against the full `schedule`, and
/// every reason it gives against the full cycle's reason for that task. The backlog is
/// built with churn (decoys inserted and removed, tasks inserted twice) so that its
/// bookkeeping is part of what is compared.
fn assert_backlog_path_matches_full(input: &Input) -> Result<(), TestCaseError> {
    let full = schedule(input);
    let mut backlog = Backlog::default();
    for (i, t) in input.queued.iter().enumerate() {
        let mut decoy = t.clone();
        decoy.id = TaskId(u64::MAX - i as u64);
        decoy.priority = decoy.priority.wrapping_add(1);
        backlog.insert(decoy);
        backlog.insert(t.clone());
        backlog.insert(t.clone());
    }
    for i in 0..input.queued.len() {
        prop_assert!(backlog.remove(TaskId(u64::MAX - i as u64)).is_some());
    }
    prop_assert_eq!(backlog.len(), input.queued.len());
    let lazy = schedule_backlog(&Input { queued: Vec::new(), ..input.clone() }, &backlog);
    prop_assert_eq!(&lazy.leases, &full.leases);
    prop_assert_eq!(&lazy.preemptions, &full.preemptions);
    prop_assert_eq!(&lazy.queue_shares, &full.queue_shares);
    let reasons: HashMap<TaskId, &str> = full.unscheduled.iter().map(|u| (u.task, u.reason.as_str())).collect();
    for u in &lazy.unscheduled {
        prop_assert_eq!(reasons.get(&u.task).copied(), Some(u.reason.as_str()), "reason of task {}", u.task);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_backlog_path_decides_like_the_full_cycle(input in inputs()) {
        assert_backlog_path_matches_full(&few_shapes(input, usize::MAX))?;
    }

    #[test]
    fn the_backlog_path_decides_like_the_full_cycle_with_large_groups(input in many_tasks_few_shapes()) {
        assert_backlog_path_matches_full(&input)?;
    }
}

/// A federation of shared GPUs: nodes with whole GPUs, with MIG slices of two profiles
/// (`nvidia.com/mig-1g.10gb`, `nvidia.com/mig-3g.40gb`), with time-sliced replicas
/// (`nvidia.com/gpu.shared`, `R` per GPU in the `nvidia.com/gpu.replicas` label) or with
/// CPU only; running tasks of every kind where they fit, and queued tasks of every kind.
/// Node names are unique and nothing is reserved, so the federation's totals are plain sums.
fn sharing_input(seed: u64, n_nodes: usize, n_queued: usize, n_running: usize, n_queues: usize) -> Input {
    const KINDS: [&str; 4] = ["nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb", SHARED_GPU_RESOURCE, GPU_RESOURCE];
    let mut g = Gen(seed);
    let nodes: Vec<Node> = (0..n_nodes)
        .map(|i| {
            let mut allocatable = Resources::new(1_000 * (8 + g.below(56)), GIB * (16 + g.below(500)), 0);
            let mut labels = BTreeMap::new();
            match g.below(4) {
                0 => allocatable.gpu = 1 + g.below(8),
                1 => {
                    allocatable.extended.insert(KINDS[0].into(), g.below(15));
                    allocatable.extended.insert(KINDS[1].into(), g.below(3));
                }
                2 => {
                    let replicas = *g.pick(&[2u64, 3, 4, 8]);
                    allocatable.extended.insert(SHARED_GPU_RESOURCE.into(), replicas * (1 + g.below(4)));
                    labels.insert(LABEL_GPU_REPLICAS.to_string(), replicas.to_string());
                }
                _ => {}
            }
            Node {
                cluster: g.pick(&CLUSTERS).to_string(),
                name: format!("n{i}"),
                allocatable,
                reserved: Resources::default(),
                topology: Topology { region: "r".into(), zone: format!("z{}", g.below(2)), rack: format!("r{}", g.below(3)) },
                gpu_model: None,
                instance_type: String::new(),
                spot: false,
                price_per_hour_usd: g.below(50) as f64,
                labels,
                taints: vec![],
                unschedulable: false,
            }
        })
        .collect();
    let queues: Vec<Queue> = (0..n_queues).map(|q| Queue::new(format!("q{q}"), *g.pick(&[1.0, 2.0]))).collect();
    let mut next_id = 1u64;
    let mut new_task = |g: &mut Gen| {
        let mut resources = Resources::new(250 * (1 + g.below(8)), GIB * (1 + g.below(8)), 0);
        match *g.pick(&KINDS) {
            GPU_RESOURCE => resources.gpu = 1 + g.below(2),
            kind => {
                resources.extended.insert(kind.to_string(), 1 + g.below(2));
            }
        }
        let id = next_id;
        next_id += 1;
        SchedTask {
            id: TaskId(id),
            queue: format!("q{}", g.below(n_queues as u64)),
            priority: 100,
            preemptible: true,
            priority_class: String::new(),
            submit_seq: id,
            resources,
            gang: None,
            placement: Placement::default(),
            avoid_nodes: vec![],
            avoid_clusters: vec![],
        }
    };
    let mut used: HashMap<usize, Resources> = HashMap::new();
    let mut running = Vec::new();
    for _ in 0..n_running {
        if nodes.is_empty() {
            break;
        }
        let t = new_task(&mut g);
        let ni = g.below(nodes.len() as u64) as usize;
        let u = used.entry(ni).or_default();
        if u.plus(&t.resources).fits_in(&nodes[ni].allocatable) {
            u.add(&t.resources);
            running.push(Running { task: t, node: nodes[ni].node_ref() });
        }
    }
    let queued = (0..n_queued).map(|_| new_task(&mut g)).collect();
    Input { queues, nodes, queued, running, config: Config::default(), held_queues: Default::default() }
}

fn sharing_inputs() -> impl Strategy<Value = Input> {
    (any::<u64>(), 0usize..12, 0usize..40, 0usize..40, 1usize..4).prop_map(|(s, n, q, r, k)| sharing_input(s, n, q, r, k))
}

/// A queue's GPUs in milli-GPUs, as docs/task-file.md ("Shared GPUs") defines them: whole
/// GPUs, MIG slices by profile, time-sliced replicas at `replica_milli` each.
fn gpu_milli(r: &Resources, replica_milli: f64) -> f64 {
    (r.gpu * 1000 + mig_milli_gpu(&r.extended)) as f64 + shared_gpu_replicas(&r.extended) as f64 * replica_milli
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn no_node_is_given_more_of_a_shared_gpu_than_it_reports(input in sharing_inputs()) {
        for d in both_paths(&input) {
            let preempted: BTreeSet<TaskId> = d.preemptions.iter().map(|p| p.task).collect();
            let queued = queued_by_id(&input);
            let mut used: HashMap<&NodeRef, Resources> = HashMap::new();
            for r in input.running.iter().filter(|r| !preempted.contains(&r.task.id)) {
                used.entry(&r.node).or_default().add(&r.task.resources);
            }
            for l in &d.leases {
                used.entry(&l.node).or_default().add(&queued[&l.task].resources);
            }
            let nodes = node_map(&input);
            for (node, u) in &used {
                let cap = &nodes[*node].allocatable;
                for (name, n) in u.extended.iter().filter(|(k, _)| is_gpu_sharing_resource(k)) {
                    let has = cap.extended.get(name).copied().unwrap_or(0);
                    prop_assert!(*n <= has, "{node} is given {n} {name} of {has}");
                }
                prop_assert!(u.gpu <= cap.gpu, "{node} is given {} whole GPUs of {}", u.gpu, cap.gpu);
            }
        }
    }

    #[test]
    fn a_queues_fair_share_counts_the_gpu_fraction_of_its_slices_and_replicas(input in sharing_inputs()) {
        let (mut replicas, mut behind) = (0u64, 0u64);
        let mut total = Resources::default();
        let mut total_gpu_milli = 0u64;
        for n in &input.nodes {
            let shared = shared_gpu_replicas(&n.allocatable.extended);
            replicas += shared;
            behind += replicas_milli_gpu(shared, gpu_replicas_of(n));
            total_gpu_milli += n.allocatable.gpu * 1000 + mig_milli_gpu(&n.allocatable.extended);
            total.add(&n.allocatable);
        }
        let replica_milli = if replicas == 0 { 0.0 } else { behind as f64 / replicas as f64 };
        let all_gpus = total_gpu_milli as f64 + replicas as f64 * replica_milli;
        for d in both_paths(&input) {
            let usage = queue_usage(&input, &d);
            for s in &d.queue_shares {
                let u = usage.get(&s.queue).cloned().unwrap_or_default();
                let mut want: f64 = 0.0;
                for (used, all) in [(gpu_milli(&u, replica_milli), all_gpus), (u.cpu_millis as f64, total.cpu_millis as f64), (u.memory_bytes as f64, total.memory_bytes as f64)] {
                    if all > 0.0 {
                        want = want.max(used / all);
                    }
                }
                prop_assert!((s.actual_share - want.min(1.0)).abs() < 1e-9, "queue {} share {} but holds {} of GPUs, CPU, memory: {}", s.queue, s.actual_share, u, want);
            }
        }
    }

    #[test]
    fn the_backlog_path_decides_like_the_full_cycle_with_shared_gpus(input in sharing_inputs()) {
        assert_backlog_path_matches_full(&input)?;
    }
}
