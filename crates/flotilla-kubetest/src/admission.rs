//! Admission of pods: Pod Security (the checks of the standards that Flotilla's pods touch)
//! and the default tolerations every pod gets.

use serde_json::{json, Value};

/// The namespace label whose level Pod Security admission enforces.
pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Pod Security admission of a pod spec at `level`, as the API server words its findings:
/// empty when admitted. No label (or `privileged`) admits everything.
pub fn pod_security_violations(pod_spec: &Value, level: &str) -> Vec<String> {
    let mut found = Vec::new();
    let containers = pod_spec["containers"].as_array().cloned().unwrap_or_default();
    if !matches!(level, "baseline" | "restricted") {
        return found;
    }
    for c in &containers {
        if c["securityContext"]["privileged"] == json!(true) {
            found.push(format!("privileged (container {} must not set securityContext.privileged=true)", c["name"]));
        }
        if c["securityContext"]["capabilities"]["add"].as_array().is_some_and(|a| !a.is_empty()) {
            found.push(format!(
                "non-default capabilities (container {} must not include capabilities in securityContext.capabilities.add)",
                c["name"]
            ));
        }
    }
    if level != "restricted" {
        return found;
    }
    let pod_sc = &pod_spec["securityContext"];
    let seccomp = |sc: &Value| matches!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault" | "Localhost"));
    for c in &containers {
        let (name, sc) = (&c["name"], &c["securityContext"]);
        if sc["allowPrivilegeEscalation"] != json!(false) {
            found.push(format!(
                "allowPrivilegeEscalation != false (container {name} must set securityContext.allowPrivilegeEscalation=false)"
            ));
        }
        if !sc["capabilities"]["drop"].as_array().is_some_and(|d| d.contains(&json!("ALL"))) {
            found.push(format!("unrestricted capabilities (container {name} must set securityContext.capabilities.drop=[\"ALL\"])"));
        }
        if pod_sc["runAsNonRoot"] != json!(true) && sc["runAsNonRoot"] != json!(true) {
            found.push(format!("runAsNonRoot != true (pod or container {name} must set securityContext.runAsNonRoot=true)"));
        }
        if pod_sc["runAsUser"] == json!(0) || sc["runAsUser"] == json!(0) {
            found.push("runAsUser=0 (pod must not set runAsUser=0)".to_string());
        }
        if !seccomp(pod_sc) && !seccomp(sc) {
            found.push(format!(
                "seccompProfile (pod or container {name} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
            ));
        }
    }
    found
}

/// The refusal message for a pod `name` under `level`, or `None` when admitted.
pub fn pod_security_refusal(pod_spec: &Value, level: &str) -> Option<String> {
    let violations = pod_security_violations(pod_spec, level);
    (!violations.is_empty()).then(|| format!("violates PodSecurity \"{level}:latest\": {}", violations.join(", ")))
}

/// DefaultTolerationSeconds admission: every pod tolerates `not-ready` and `unreachable`
/// (NoExecute) for `seconds` unless it says otherwise. That is what delays taint eviction
/// from a lost node by five minutes.
pub fn add_default_tolerations(pod: &mut Value, seconds: u64) {
    let tolerations = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    let mut out = tolerations.clone();
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let has = tolerations.iter().any(|t| t["key"] == key && (t["effect"] == "NoExecute" || t["effect"].is_null()));
        if !has {
            out.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
    pod["spec"]["tolerations"] = Value::Array(out);
}

/// The causes of a pod spec that fails validation (at `path`), the server's way.
pub fn pod_spec_invalid(spec: &Value, path: &str) -> Vec<String> {
    let mut causes = Vec::new();
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        causes.push(format!("{path}.containers: Required value"));
    }
    for (i, c) in containers.iter().enumerate() {
        if c["name"].as_str().is_none_or(str::is_empty) {
            causes.push(format!("{path}.containers[{i}].name: Required value"));
        }
        if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
            causes.push(format!("{path}.containers[{i}].image: Required value"));
        }
    }
    causes
}
