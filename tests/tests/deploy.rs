//! The Kustomize manifests in `deploy/` render offline with `kubectl kustomize`, every object
//! parses as its typed Kubernetes API struct (k8s-openapi, v1.33) without a field the API
//! would drop, and the settings the system depends on hold: the scheduler's replica ids,
//! peer URLs, volumes and probes agree with each other; the executor's RBAC is exactly what
//! its kube backend calls; the agents' NetworkPolicy denies all but DNS and the gateway.
//!
//! Needs `kubectl` (Debian package kubernetes-client) on PATH, or its path in `$KUBECTL`.
//! Without it the tests fail: they do not skip. The manifests are written to render the same
//! with kubectl 1.20 (Debian bookworm's package, kustomize v2.0.3) as with current kubectl.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_executor::KubeBackendConfig;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::serde::Serialize;
use serde_json::Value;

const IMAGE_REPOSITORY: &str = "ghcr.io/flotilla-sched/flotilla";
const EXECUTOR_OVERLAYS: [&str; 2] = ["eks-us-east", "gke-europe"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every object of one rendered kustomization, by kind.
#[derive(Default)]
struct Rendered {
    dir: String,
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    stateful_sets: Vec<StatefulSet>,
    deployments: Vec<Deployment>,
    pod_disruption_budgets: Vec<PodDisruptionBudget>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    network_policies: Vec<NetworkPolicy>,
    /// cert-manager's Issuers and Certificates (no typed structs in k8s-openapi).
    cert_manager: Vec<Value>,
    /// KEDA's ScaledObjects (likewise).
    keda: Vec<Value>,
}

/// Runs `kubectl kustomize deploy/<dir>` and parses every document into its typed struct.
/// Panics on a missing kubectl, a render error, an unknown kind or an object that does not
/// parse.
fn render(dir: &str) -> Rendered {
    let path = deploy_dir().join(dir);
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let output = match Command::new(&kubectl).arg("kustomize").arg(&path).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{kubectl}` was not found: these tests render deploy/ with `kubectl kustomize` and need kubectl on PATH \
             (Debian/Ubuntu: apt-get install kubernetes-client; CI installs it) or its path in $KUBECTL"
        ),
        Err(e) => panic!("running `{kubectl} kustomize {}`: {e}", path.display()),
    };
    assert!(
        output.status.success(),
        "`{kubectl} kustomize {}` failed ({}):\n{}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8(output.stdout).expect("kubectl kustomize prints UTF-8");
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&yaml).unwrap_or_else(|e| panic!("deploy/{dir}: the rendered YAML does not parse: {e}"));
    let mut r = Rendered { dir: dir.to_string(), ..Default::default() };
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let at = format!("deploy/{dir}: {kind} {}", doc["metadata"]["name"].as_str().unwrap_or("(no name)"));
        match kind.as_str() {
            "Namespace" => r.namespaces.push(typed(&doc, &at)),
            "ServiceAccount" => r.service_accounts.push(typed(&doc, &at)),
            "Service" => r.services.push(typed(&doc, &at)),
            "ConfigMap" => r.config_maps.push(typed(&doc, &at)),
            "Secret" => r.secrets.push(typed(&doc, &at)),
            "StatefulSet" => r.stateful_sets.push(typed(&doc, &at)),
            "Deployment" => r.deployments.push(typed(&doc, &at)),
            "PodDisruptionBudget" => r.pod_disruption_budgets.push(typed(&doc, &at)),
            "ClusterRole" => r.cluster_roles.push(typed(&doc, &at)),
            "ClusterRoleBinding" => r.cluster_role_bindings.push(typed(&doc, &at)),
            "Role" => r.roles.push(typed(&doc, &at)),
            "RoleBinding" => r.role_bindings.push(typed(&doc, &at)),
            "NetworkPolicy" => r.network_policies.push(typed(&doc, &at)),
            "Issuer" | "Certificate" if doc["apiVersion"] == "cert-manager.io/v1" => r.cert_manager.push(doc.clone()),
            "ScaledObject" if doc["apiVersion"] == "keda.sh/v1alpha1" => r.keda.push(doc.clone()),
            _ => panic!("{at}: kind {kind:?} is not one this test knows; add it to `render`"),
        }
    }
    r
}

/// `doc` as `T`. k8s-openapi checks apiVersion and kind but ignores fields it does not
/// know, as the API server would drop them: so serialise the struct again and require
/// every field back with the same value, which catches a misspelt or misplaced field.
/// (Fields the type adds, like `apiVersion` and `kind` of an embedded PVC template, are
/// fine.)
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, at: &str) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{at}: does not parse as its Kubernetes type: {e}"));
    let again = serde_json::to_value(&object).expect("k8s-openapi types serialise");
    let mut differences = Vec::new();
    diff(doc, &again, String::new(), &mut differences);
    assert!(
        differences.is_empty(),
        "{at}: fields the Kubernetes API does not have, or values it would change:\n  {}",
        differences.join("\n  ")
    );
    object
}

fn diff(ours: &Value, api: &Value, path: String, out: &mut Vec<String>) {
    match (ours, api) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => diff(v, w, format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}: unknown field")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                diff(v, w, format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

fn name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn pod_spec(template: &PodTemplateSpec) -> &PodSpec {
    template.spec.as_ref().expect("a pod template has a spec")
}

fn template_labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
}

/// True when `selector` (matchLabels only) selects pods labelled `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn match_labels(selector: &LabelSelector) -> BTreeMap<String, String> {
    assert!(selector.match_expressions.is_none(), "only matchLabels selectors are expected");
    selector.match_labels.clone().unwrap_or_default()
}

/// The value of `--name=value` or `--name value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let long = format!("--{name}");
    let eq = format!("--{name}=");
    args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix(&eq) {
        Some(v) => Some(v),
        None if *a == long => args.get(i + 1).map(String::as_str),
        None => None,
    })
}

/// `arg` with every `$(VAR)` replaced as Kubernetes does for container args.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    assert!(!out.contains("$("), "{arg:?}: a variable is not defined in the container's env");
    out
}

/// A container's env as Kubernetes would set it: literal values and ConfigMap keys (looked
/// up in `r`) resolved; field references returned apart as (variable, fieldPath).
fn container_env(r: &Rendered, c: &Container) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut values = BTreeMap::new();
    let mut fields = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let from = e.value_from.as_ref();
        match (&e.value, from.and_then(|f| f.field_ref.as_ref()), from.and_then(|f| f.config_map_key_ref.as_ref())) {
            (Some(v), None, None) => {
                values.insert(e.name.clone(), v.clone());
            }
            (None, Some(f), None) => {
                fields.insert(e.name.clone(), f.field_path.clone());
            }
            (None, None, Some(k)) => {
                let at = format!("deploy/{}: env {}", r.dir, e.name);
                assert_ne!(k.optional, Some(true), "{at}: a required key");
                let cm = r
                    .config_maps
                    .iter()
                    .find(|c| name(&c.metadata) == k.name)
                    .unwrap_or_else(|| panic!("{at}: ConfigMap {} is not rendered", k.name));
                let value = cm.data.as_ref().and_then(|d| d.get(&k.key)).unwrap_or_else(|| panic!("{at}: {} has no key {}", k.name, k.key));
                values.insert(e.name.clone(), value.clone());
            }
            _ => panic!("env {}: expected a literal value, a fieldRef or a configMapKeyRef", e.name),
        }
    }
    (values, fields)
}

/// The namespace deploy/namespace creates, where the scheduler and the executor run.
fn flotilla_namespace() -> String {
    let r = render("namespace");
    let ns = only(&r.namespaces, "Namespace", "namespace");
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("pod-security.kubernetes.io/enforce").map(String::as_str),
        Some("restricted"),
        "Flotilla's own pods are restricted"
    );
    name(&ns.metadata).to_string()
}

/// Pod and container hardening shared by the scheduler and the executor.
fn assert_hardened(at: &str, spec: &PodSpec, c: &Container) {
    let pod = spec.security_context.as_ref().unwrap_or_else(|| panic!("{at}: no pod securityContext"));
    assert_eq!(pod.run_as_non_root, Some(true), "{at}: runAsNonRoot");
    assert!(pod.run_as_user.is_some_and(|u| u != 0), "{at}: runAsUser must be a non-root uid");
    assert_eq!(pod.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"), "{at}: seccomp profile");
    let sc = c.security_context.as_ref().unwrap_or_else(|| panic!("{at}: no container securityContext"));
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{at}: readOnlyRootFilesystem");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{at}: allowPrivilegeEscalation");
    assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]), "{at}: capabilities.drop");
    let image = c.image.as_deref().unwrap_or_default();
    assert!(image.starts_with(&format!("{IMAGE_REPOSITORY}:")), "{at}: image {image:?} is not {IMAGE_REPOSITORY}:TAG");
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref()).unwrap_or_else(|| panic!("{at}: no resource requests"));
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"), "{at}: cpu and memory requests");
}

fn only<'a, T>(items: &'a [T], what: &str, dir: &str) -> &'a T {
    assert_eq!(items.len(), 1, "deploy/{dir}: expected exactly one {what}");
    &items[0]
}

#[test]
fn every_kustomization_renders_and_parses_as_typed_objects() {
    fn find(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                find(&path, root, out);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                out.insert(path.parent().unwrap().strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let root = deploy_dir();
    let mut dirs = BTreeSet::new();
    find(&root, &root, &mut dirs);
    let expected = [
        "namespace",
        "scheduler",
        "executor/base",
        "executor/overlays/eks-us-east",
        "executor/overlays/gke-europe",
        "examples/agents-networkpolicy",
        "examples/cert-manager",
        "examples/keda",
    ];
    for dir in expected {
        assert!(dirs.contains(dir), "deploy/{dir}/kustomization.yaml is missing (found {dirs:?})");
    }
    for dir in &dirs {
        let r = render(dir);
        let count = r.namespaces.len()
            + r.service_accounts.len()
            + r.services.len()
            + r.config_maps.len()
            + r.secrets.len()
            + r.stateful_sets.len()
            + r.deployments.len()
            + r.pod_disruption_budgets.len()
            + r.cluster_roles.len()
            + r.cluster_role_bindings.len()
            + r.roles.len()
            + r.role_bindings.len()
            + r.network_policies.len()
            + r.cert_manager.len()
            + r.keda.len();
        assert!(count > 0, "deploy/{dir} renders no objects");
    }
}

/// Which Secret or ConfigMap the file at `path` comes from: ("secret" | "configMap", name).
fn mounted_from(pod: &PodSpec, c: &Container, path: &str, dir: &str) -> (&'static str, String) {
    let parent = Path::new(path).parent().unwrap();
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == parent)
        .unwrap_or_else(|| panic!("deploy/{dir}: {path} is not in a mounted volume"));
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("the mounted volume");
    match (&volume.secret, &volume.config_map) {
        (Some(s), None) => ("secret", s.secret_name.clone().expect("secretName")),
        (None, Some(cm)) => ("configMap", cm.name.clone()),
        _ => panic!("deploy/{dir}: {path} comes from neither a Secret nor a ConfigMap"),
    }
}

#[test]
fn the_scheduler_runs_with_auth_and_tls_from_the_secrets_cert_manager_writes() {
    let r = render("scheduler");
    let dir = r.dir.as_str();
    let sts = only(&r.stateful_sets, "StatefulSet", dir);
    let pod = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod spec");
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(mounted_from(pod, c, flag(&args, "auth-file").expect("--auth-file"), dir), ("secret", "flotilla-auth".into()));
    let certs = render("examples/cert-manager");
    let secret_of = |cert: &str| {
        let c = certs.cert_manager.iter().find(|d| d["kind"] == "Certificate" && d["metadata"]["name"] == cert).expect("the Certificate");
        c["spec"]["secretName"].as_str().unwrap().to_string()
    };
    for (flag_name, cert) in [
        ("tls-cert", "flotilla-scheduler-tls"),
        ("tls-key", "flotilla-scheduler-tls"),
        ("peer-tls-cert", "flotilla-scheduler-peer"),
        ("peer-tls-key", "flotilla-scheduler-peer"),
        ("peer-ca-cert", "flotilla-scheduler-peer"),
    ] {
        let path = flag(&args, flag_name).unwrap_or_else(|| panic!("--{flag_name}"));
        assert_eq!(mounted_from(pod, c, path, dir), ("secret", secret_of(cert)), "--{flag_name} {path}");
    }
    // The kubelet's gRPC probes speak neither TLS nor tokens: they use the probe port, which
    // --tls-cert and --auth-file do not cover (plaintext, health and depths only).
    let probe_port = flag(&args, "probe-listen").expect("--probe-listen").rsplit(':').next().unwrap().parse::<i32>().unwrap();
    for probe in [&c.startup_probe, &c.liveness_probe, &c.readiness_probe] {
        let grpc = probe.as_ref().and_then(|p| p.grpc.as_ref()).expect("a gRPC probe");
        assert_eq!(grpc.port, probe_port, "probes use the plaintext probe port");
    }
    assert!(!args.iter().any(|a| a == "--insecure"), "the shipped manifests never run without authentication");
}

#[test]
fn scheduler_is_three_replicas_whose_ids_peers_and_volumes_agree() {
    let r = render("scheduler");
    let dir = r.dir.as_str();
    let sts = only(&r.stateful_sets, "StatefulSet", dir);
    let ns = sts.metadata.namespace.clone().expect("the StatefulSet has a namespace");
    assert_eq!(ns, flotilla_namespace(), "deploy/{dir}: runs in the namespace deploy/namespace creates");
    assert!(r.namespaces.is_empty(), "deploy/{dir}: the namespace belongs to deploy/namespace");
    let spec = sts.spec.as_ref().expect("StatefulSet spec");
    assert_eq!(spec.replicas, Some(3), "three replicas");
    // Ready needs a leader, a leader needs a majority: the pods must start together.
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    assert_eq!(start, 1, "pod ordinals start at 1, the first replica id");
    let labels = template_labels(&spec.template);
    assert!(selects(&match_labels(&spec.selector), &labels), "the StatefulSet selects its own pods");

    // The PVC template, mounted at --data-dir.
    let claims = spec.volume_claim_templates.as_ref().expect("volumeClaimTemplates");
    let claim = only(claims, "volume claim template", dir);
    let claim_name = name(&claim.metadata);
    let claim_spec = claim.spec.as_ref().expect("claim spec");
    assert_eq!(claim_spec.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
    assert!(claim_spec.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some_and(|r| r.contains_key("storage")), "storage request");
    let pod = pod_spec(&spec.template);
    let c = only(&pod.containers, "container", dir);
    assert_hardened("scheduler", pod, c);
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("server"));
    let data_dir = flag(&args, "data-dir").expect("--data-dir");
    assert!(
        c.volume_mounts.iter().flatten().any(|m| m.name == claim_name && m.mount_path == data_dir),
        "the claim {claim_name} is mounted at --data-dir {data_dir}"
    );

    // Ports: --listen is the container's grpc port, --peer-listen its peer port, --http its
    // http port.
    let port = |name: &str| c.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port);
    let grpc = port("grpc").expect("a grpc container port");
    let peer = port("peer").expect("a peer container port");
    let http = port("http").expect("an http container port");
    let probe = port("probe").expect("a probe container port");
    assert_eq!(flag(&args, "probe-listen"), Some(format!("0.0.0.0:{probe}").as_str()));
    assert_eq!(flag(&args, "listen"), Some(format!("0.0.0.0:{grpc}").as_str()));
    assert_eq!(flag(&args, "peer-listen"), Some(format!("0.0.0.0:{peer}").as_str()));
    assert_eq!(flag(&args, "http"), Some(format!("0.0.0.0:{http}").as_str()));
    assert_eq!((grpc, peer, http), (50051, 50052, 8080));
    // Readiness asks for the whole server (SERVING once a leader is known); liveness and
    // startup for "liveness" (SERVING while the process serves), so that replicas waiting
    // for a quorum are not restarted.
    let grpc_service = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        let g = p.and_then(|p| p.grpc.as_ref()).expect("a gRPC probe");
        assert_eq!(g.port, probe, "probes use the probe port");
        g.service.clone().unwrap_or_default()
    };
    assert_eq!(grpc_service(c.readiness_probe.as_ref()), "");
    assert_eq!(grpc_service(c.liveness_probe.as_ref()), flotilla_server::health::LIVENESS);
    assert_eq!(grpc_service(c.startup_probe.as_ref()), flotilla_server::health::LIVENESS);
    let annotations = spec.template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default();
    assert_eq!(annotations.get("prometheus.io/scrape").map(String::as_str), Some("true"));
    assert_eq!(annotations.get("prometheus.io/port"), Some(&http.to_string()));
    assert_eq!(annotations.get("prometheus.io/path").map(String::as_str), Some("/metrics"));

    // The headless Service gives each pod the name used in --peers, before it is ready.
    let service_name = spec.service_name.clone().expect("serviceName");
    let peers_svc = r.services.iter().find(|s| name(&s.metadata) == service_name).expect("the headless Service named by serviceName");
    let peers_spec = peers_svc.spec.as_ref().expect("Service spec");
    assert_eq!(peers_spec.cluster_ip.as_deref(), Some("None"), "the peers Service is headless");
    assert_eq!(peers_spec.publish_not_ready_addresses, Some(true), "peers resolve before they are ready");
    assert!(selects(peers_spec.selector.as_ref().expect("selector"), &labels));
    let peer_ports: BTreeSet<i32> = peers_spec.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(peer_ports, BTreeSet::from([peer]), "the headless Service names the peer port only");
    // The client Service: ClusterIP, both ports.
    let client = r.services.iter().find(|s| name(&s.metadata) == "flotilla-scheduler").expect("the client Service flotilla-scheduler");
    let client_spec = client.spec.as_ref().expect("Service spec");
    assert_eq!(client_spec.type_.as_deref(), Some("ClusterIP"));
    assert_ne!(client_spec.cluster_ip.as_deref(), Some("None"));
    assert!(selects(client_spec.selector.as_ref().expect("selector"), &labels));
    let client_ports: BTreeSet<i32> = client_spec.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(client_ports, BTreeSet::from([grpc, http]), "clients never see the peer port");
    // KEDA's Service: the probe port only.
    let scaler = r.services.iter().find(|s| name(&s.metadata) == "flotilla-scheduler-scaler").expect("the scaler Service");
    let scaler_spec = scaler.spec.as_ref().expect("Service spec");
    assert!(selects(scaler_spec.selector.as_ref().expect("selector"), &labels));
    let scaler_ports: Vec<(i32, Option<IntOrString>)> =
        scaler_spec.ports.iter().flatten().map(|p| (p.port, p.target_port.clone())).collect();
    assert_eq!(scaler_ports, [(probe, Some(IntOrString::String("probe".into())))], "the scaler Service names the probe port only");
    assert_eq!(r.services.len(), 3);

    // Replica ids: --id is the pod-index label (the ordinal), and --peers lists exactly the
    // ordinals, each at its pod's DNS name in the headless Service.
    let (literal, fields) = container_env(&r, c);
    let index_var = fields.iter().find(|(_, f)| *f == "metadata.labels['apps.kubernetes.io/pod-index']").map(|(k, _)| k.clone());
    let index_var = index_var.expect("an env var from the apps.kubernetes.io/pod-index label");
    assert_eq!(flag(&args, "id"), Some(format!("$({index_var})").as_str()), "--id is the pod ordinal");
    let peers_arg = flag(&args, "peers").expect("--peers");
    for ordinal in start..start + spec.replicas.unwrap() {
        let mut env = literal.clone();
        for (var, field) in &fields {
            let value = match field.as_str() {
                "metadata.namespace" => ns.clone(),
                "metadata.labels['apps.kubernetes.io/pod-index']" => ordinal.to_string(),
                other => panic!("unexpected fieldRef {other}"),
            };
            env.insert(var.clone(), value);
        }
        let id: u64 = expand(flag(&args, "id").unwrap(), &env).parse().expect("--id is a number");
        assert_eq!(id, ordinal as u64);
        let peers = flotilla_server::parse_peers(&expand(peers_arg, &env)).expect("--peers parses as the server parses it");
        let ids: BTreeSet<u64> = peers.keys().copied().collect();
        let ordinals: BTreeSet<u64> = (start..start + spec.replicas.unwrap()).map(|o| o as u64).collect();
        assert_eq!(ids, ordinals, "--peers lists exactly the replicas' ids");
        let sts_name = name(&sts.metadata);
        assert_eq!(peers[&id], format!("https://{sts_name}-{ordinal}.{service_name}.{ns}.svc:{peer}"), "replica {id}'s own peer port");
    }

    // At most one replica down.
    let pdb = only(&r.pod_disruption_budgets, "PodDisruptionBudget", dir);
    let pdb_spec = pdb.spec.as_ref().expect("PDB spec");
    assert_eq!(pdb_spec.max_unavailable, Some(IntOrString::Int(1)));
    assert!(selects(&match_labels(pdb_spec.selector.as_ref().expect("selector")), &labels));

    // A ServiceAccount with no API access at all.
    let sa = only(&r.service_accounts, "ServiceAccount", dir);
    assert_eq!(pod.service_account_name.as_deref(), Some(name(&sa.metadata)));
    assert_eq!(sa.automount_service_account_token, Some(false));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert!(
        r.roles.is_empty() && r.role_bindings.is_empty() && r.cluster_roles.is_empty() && r.cluster_role_bindings.is_empty(),
        "the scheduler needs no RBAC"
    );
}

/// (API group, resource) -> verbs: what the kube backend calls (crates/flotilla-executor/src/kube).
fn expected_executor_grants(create_namespaces: bool) -> BTreeMap<(String, String), BTreeSet<String>> {
    let set = |verbs: &[&str]| verbs.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>();
    let mut grants = BTreeMap::from([
        // Reflector on Api::<Node>::all.
        ((String::new(), "nodes".to_string()), set(&["get", "list", "watch"])),
        // Reflectors on Api::<Pod>::all: Flotilla's pods and (count_reserved) the others;
        // delete with a bounded grace when the executor's lease expired.
        ((String::new(), "pods".to_string()), set(&["get", "list", "watch", "delete"])),
        // `flotilla logs`: Api::<Pod>::log_stream.
        ((String::new(), "pods/log".to_string()), set(&["get"])),
        // Reflector on Api::<Job>::all; create per lease, delete per stop.
        (("batch".to_string(), "jobs".to_string()), set(&["get", "list", "watch", "create", "delete"])),
        // Reflector on Api::<Event>::all: the Job controller's FailedCreate events.
        ((String::new(), "events".to_string()), set(&["list", "watch"])),
        // Reflector on Api::<Service>::all: the gang Services; create per gang, delete with
        // its last Job.
        ((String::new(), "services".to_string()), set(&["get", "list", "watch", "create", "delete"])),
    ]);
    if create_namespaces {
        // Created on a 404 from Job creation; 409 tolerated, never read.
        grants.insert((String::new(), "namespaces".to_string()), set(&["create"]));
    }
    grants
}

#[test]
fn executor_overlays_run_in_cluster_with_exactly_the_rbac_the_kube_backend_uses() {
    for cluster in EXECUTOR_OVERLAYS {
        let dir = format!("executor/overlays/{cluster}");
        let r = render(&dir);
        let deployment = only(&r.deployments, "Deployment", &dir);
        assert!(name(&deployment.metadata).ends_with(&format!("-{cluster}")), "deploy/{dir}: names carry the cluster suffix");
        let ns = deployment.metadata.namespace.clone().expect("the Deployment has a namespace");
        assert_eq!(ns, flotilla_namespace(), "deploy/{dir}: runs in the namespace deploy/namespace creates");
        assert!(r.namespaces.is_empty(), "deploy/{dir}: the namespace belongs to deploy/namespace");
        let spec = deployment.spec.as_ref().expect("Deployment spec");
        assert_eq!(spec.replicas, Some(1), "deploy/{dir}: one executor per cluster");
        assert_eq!(spec.strategy.as_ref().and_then(|s| s.type_.as_deref()), Some("Recreate"), "deploy/{dir}: never two executors at once");
        assert!(selects(&match_labels(&spec.selector), &template_labels(&spec.template)));
        let pod = pod_spec(&spec.template);
        let c = only(&pod.containers, "container", &dir);
        assert_hardened(&dir, pod, c);

        let args = c.args.clone().unwrap_or_default();
        let (env, fields) = container_env(&r, c);
        assert!(fields.is_empty());
        assert_eq!(args.first().map(String::as_str), Some("executor"));
        assert!(args.iter().any(|a| a == "--in-cluster"), "deploy/{dir}: --in-cluster");
        // A stuck executor is restarted: its /healthz fails once syncs stop succeeding.
        let http = flag(&args, "http").expect("--http serves /healthz and /metrics");
        let probe = c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP liveness probe");
        assert_eq!(probe.path.as_deref(), Some("/healthz"), "deploy/{dir}");
        let port = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some("http")).expect("the http port");
        assert!(http.ends_with(&format!(":{}", port.container_port)), "deploy/{dir}: --http {http} matches the port");
        assert!(flag(&args, "kubeconfig").is_none() && flag(&args, "sim").is_none(), "deploy/{dir}: one backend only");
        assert_eq!(
            expand(flag(&args, "cluster").expect("--cluster"), &env),
            cluster,
            "deploy/{dir}: --cluster names the overlay's cluster"
        );
        assert!(flotilla_model::is_dns1123_label(cluster), "{cluster}: cluster names are DNS-1123 labels");
        let server = expand(flag(&args, "server").expect("--server"), &env);
        assert!(server.starts_with("https://") && server.ends_with(":50051"), "deploy/{dir}: --server {server:?}");
        // The cluster's credential and the scheduler's CA come from mounted files.
        assert_eq!(
            mounted_from(pod, c, flag(&args, "token-file").expect("--token-file"), &dir),
            ("secret", "flotilla-executor-token".into())
        );
        assert_eq!(mounted_from(pod, c, flag(&args, "ca-cert").expect("--ca-cert"), &dir), ("configMap", "flotilla-scheduler-ca".into()));

        // --kube-config is a file of a mounted ConfigMap that the backend accepts.
        let config_path = Path::new(flag(&args, "kube-config").expect("--kube-config"));
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| config_path.parent() == Some(Path::new(&m.mount_path)))
            .unwrap_or_else(|| panic!("deploy/{dir}: no volume mounted at {}", config_path.parent().unwrap().display()));
        let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("the mounted volume");
        let cm_name = volume.config_map.as_ref().map(|c| c.name.clone()).expect("a ConfigMap volume");
        let cm = r
            .config_maps
            .iter()
            .find(|c| name(&c.metadata) == cm_name)
            .unwrap_or_else(|| panic!("deploy/{dir}: ConfigMap {cm_name} is not rendered"));
        let file = config_path.file_name().unwrap().to_str().unwrap();
        let toml = cm.data.as_ref().and_then(|d| d.get(file)).unwrap_or_else(|| panic!("deploy/{dir}: {cm_name} has no key {file}"));
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(file), toml).unwrap();
        let kube = KubeBackendConfig::load(tmp.path().join(file)).unwrap_or_else(|e| panic!("deploy/{dir}: {e}"));
        assert!(!kube.prices.is_empty(), "deploy/{dir}: executor.toml lists prices");

        // RBAC: the ServiceAccount's grants, through every binding of it, are exactly the
        // calls the backend makes; nothing namespaced, nothing wildcard, nothing unbound.
        let sa = pod.service_account_name.clone().expect("serviceAccountName");
        assert!(r.service_accounts.iter().any(|s| name(&s.metadata) == sa && s.metadata.namespace.as_deref() == Some(ns.as_str())));
        assert_ne!(pod.automount_service_account_token, Some(false), "deploy/{dir}: --in-cluster needs the token");
        assert!(r.roles.is_empty() && r.role_bindings.is_empty(), "deploy/{dir}: queue namespaces are open-ended, so ClusterRoles only");
        let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for binding in &r.cluster_role_bindings {
            let at = format!("deploy/{dir}: ClusterRoleBinding {}", name(&binding.metadata));
            let subjects = binding.subjects.clone().unwrap_or_default();
            assert_eq!(subjects.len(), 1, "{at}: one subject");
            assert_eq!(
                (subjects[0].kind.as_str(), subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
                ("ServiceAccount", sa.as_str(), Some(ns.as_str())),
                "{at}: binds the executor's ServiceAccount"
            );
            assert_eq!(binding.role_ref.kind, "ClusterRole", "{at}");
            let role = r
                .cluster_roles
                .iter()
                .find(|c| name(&c.metadata) == binding.role_ref.name)
                .unwrap_or_else(|| panic!("{at}: its ClusterRole is not rendered"));
            assert!(role.aggregation_rule.is_none());
            for rule in role.rules.iter().flatten() {
                assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{at}: plain resource rules only");
                for group in rule.api_groups.iter().flatten() {
                    for resource in rule.resources.iter().flatten() {
                        let verbs = granted.entry((group.clone(), resource.clone())).or_default();
                        verbs.extend(rule.verbs.iter().cloned());
                    }
                }
            }
        }
        assert_eq!(r.cluster_roles.len(), r.cluster_role_bindings.len(), "deploy/{dir}: every ClusterRole is bound");
        assert_eq!(granted, expected_executor_grants(kube.create_namespaces), "deploy/{dir}: RBAC is exactly what the executor calls");
    }
}

#[test]
fn keda_example_scales_a_worker_deployment_through_the_schedulers_scaler_service() {
    let r = render("examples/keda");
    let scheduler = render("scheduler");
    let dir = r.dir.as_str();
    let so = only(&r.keda, "ScaledObject", dir);
    let worker = only(&r.deployments, "Deployment", dir);
    assert_eq!(so["spec"]["scaleTargetRef"]["name"].as_str(), Some(name(&worker.metadata)), "it scales the worker");
    assert_eq!(so["metadata"]["namespace"].as_str(), worker.metadata.namespace.as_deref(), "in the worker's namespace");
    let trigger = &so["spec"]["triggers"][0];
    assert!(matches!(trigger["type"].as_str(), Some("external" | "external-push")), "{trigger}");
    let metadata: std::collections::HashMap<String, String> = trigger["metadata"]
        .as_object()
        .expect("trigger metadata")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    // The scaler address is the scheduler's scaler Service, in the scheduler's namespace, on its port.
    let service = scheduler.services.iter().find(|s| name(&s.metadata) == "flotilla-scheduler-scaler").expect("the scaler Service");
    let port = service.spec.as_ref().and_then(|s| s.ports.as_ref()).expect("ports")[0].port;
    let namespace = service.metadata.namespace.clone().expect("a namespace");
    assert_eq!(metadata["scalerAddress"], format!("flotilla-scheduler-scaler.{namespace}.svc:{port}"));
    // Flotilla's scaler accepts the metadata as KEDA will send it.
    let object = flotilla_api::externalscaler::ScaledObjectRef { scaler_metadata: metadata, ..Default::default() };
    let target = flotilla_server::keda::target_of(&object).unwrap_or_else(|e| panic!("deploy/{dir}: {}", e.message()));
    assert_eq!(target.queue, "agents");
}

#[test]
fn agent_network_policy_denies_ingress_and_allows_only_dns_and_the_model_gateway() {
    let r = render("examples/agents-networkpolicy");
    let dir = r.dir.as_str();
    let policy = only(&r.network_policies, "NetworkPolicy", dir);
    let ns = policy.metadata.namespace.clone().expect("a namespace");
    assert_eq!(ns, format!("{}agents", KubeBackendConfig::default().namespace_prefix), "the namespace of queue \"agents\"");
    assert!(r.namespaces.iter().any(|n| name(&n.metadata) == ns));
    let spec = policy.spec.as_ref().expect("NetworkPolicy spec");
    // The label the executor puts on every task pod.
    assert_eq!(
        match_labels(spec.pod_selector.as_ref().expect("a podSelector")),
        BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "flotilla".to_string())])
    );
    let types: BTreeSet<&str> = spec.policy_types.iter().flatten().map(String::as_str).collect();
    assert_eq!(types, BTreeSet::from(["Ingress", "Egress"]), "both directions are policed");
    assert!(spec.ingress.as_ref().is_none_or(Vec::is_empty), "no ingress rule: all ingress denied");

    let namespace_of = |peer: &NetworkPolicyPeer| {
        assert!(peer.ip_block.is_none(), "no address blocks");
        let ns = match_labels(peer.namespace_selector.as_ref().expect("a namespaceSelector"));
        ns.get("kubernetes.io/metadata.name").cloned().expect("a namespace chosen by name")
    };
    let mut allowed: BTreeMap<String, BTreeSet<(String, i32)>> = BTreeMap::new();
    for rule in spec.egress.iter().flatten() {
        let to = rule.to.as_ref().expect("every egress rule names its peers: an empty `to` allows everywhere");
        let ports = rule.ports.as_ref().expect("every egress rule names its ports");
        for peer in to {
            let ns = namespace_of(peer);
            let pods = peer.pod_selector.as_ref().map(match_labels).unwrap_or_default();
            if ns == "inference" {
                assert_eq!(pods, BTreeMap::from([("app".to_string(), "model-gateway".to_string())]), "only the gateway pods");
            }
            for p in ports {
                let port = match &p.port {
                    Some(IntOrString::Int(n)) => *n,
                    other => panic!("egress port {other:?}: expected a number"),
                };
                assert!(p.end_port.is_none());
                allowed.entry(ns.clone()).or_default().insert((p.protocol.clone().unwrap_or_else(|| "TCP".into()), port));
            }
        }
    }
    let expected = BTreeMap::from([
        ("kube-system".to_string(), BTreeSet::from([("UDP".to_string(), 53), ("TCP".to_string(), 53)])),
        ("inference".to_string(), BTreeSet::from([("TCP".to_string(), 8000)])),
    ]);
    assert_eq!(allowed, expected, "egress only to DNS and the model gateway");
}
