//! The Kubernetes backend's settings (`flotilla executor --kube-config FILE`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use flotilla_model::PodSecurity;
use serde::Deserialize;

use crate::config::{de_duration, ConfigError};

/// Settings of the Kubernetes backend (a TOML file given to `flotilla executor`, or
/// [`KubeBackendConfig::default`]).
///
/// ```toml
/// namespace_prefix = "flotilla-"          # Jobs go to namespace <prefix><queue>
/// rack_label = "topology.flotilla.io/rack"
/// create_namespaces = true
/// count_reserved = true                   # watch non-Flotilla pods to report reserved resources
/// image_pull_failure_after = "2m"
/// node_lost_after = "5m"                  # a node not Ready this long: its attempts are lost
/// keep_finished = "15m"                   # finished Jobs kept this long for their logs
/// checkpoint_mount_path = "/flotilla/checkpoint"
/// checkpoint_claim = "flotilla-checkpoints"   # optional PVC per queue namespace; else emptyDir
/// service_account = "flotilla-task"           # optional
/// image_pull_secrets = ["registry"]           # optional
/// namespace_pod_security = "baseline"     # enforce level of the namespaces it creates
///
/// [prices]                                # on-demand USD per node-hour by instance type
/// "p5.48xlarge" = 98.32
/// [spot_prices]                           # used for spot nodes; falls back to [prices]
/// "g5.12xlarge" = 2.13
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeBackendConfig {
    pub namespace_prefix: String,
    pub rack_label: String,
    pub create_namespaces: bool,
    pub count_reserved: bool,
    #[serde(deserialize_with = "de_duration")]
    pub image_pull_failure_after: Duration,
    /// A node whose `Ready` condition has not been `True` for this long is presumed gone:
    /// its attempts are reported `Lost` (not the task's fault) and retried elsewhere, and
    /// their Jobs deleted. The default, 5 minutes, is Kubernetes' own default toleration of
    /// an unreachable node. Shorter moves work sooner but risks a second copy running while
    /// a partitioned node's kubelet still runs the first. Not applied while many nodes are
    /// not Ready at once (see `nodes::Disruption`).
    #[serde(deserialize_with = "de_duration")]
    pub node_lost_after: Duration,
    /// How long a finished attempt's Job (and pod) is kept, so `kubectl logs` and
    /// `flotilla logs` can read its output. Also its `ttlSecondsAfterFinished`.
    #[serde(deserialize_with = "de_duration")]
    pub keep_finished: Duration,
    pub checkpoint_mount_path: String,
    pub checkpoint_claim: Option<String>,
    pub service_account: Option<String>,
    pub image_pull_secrets: Vec<String>,
    /// The Pod Security level a namespace this executor creates enforces
    /// (`pod-security.kubernetes.io/enforce`); it warns and audits at `restricted`. The
    /// default, `baseline`, admits tasks that ask for `restricted` or `baseline`; a task
    /// asking for more is refused by the API server and its attempt fails with the reason.
    pub namespace_pod_security: PodSecurity,
    pub prices: BTreeMap<String, f64>,
    pub spot_prices: BTreeMap<String, f64>,
}

impl Default for KubeBackendConfig {
    fn default() -> Self {
        KubeBackendConfig {
            namespace_prefix: "flotilla-".into(),
            rack_label: crate::kube::DEFAULT_RACK_LABEL.into(),
            create_namespaces: true,
            count_reserved: true,
            image_pull_failure_after: Duration::from_secs(120),
            node_lost_after: Duration::from_secs(300),
            keep_finished: Duration::from_secs(15 * 60),
            checkpoint_mount_path: "/flotilla/checkpoint".into(),
            checkpoint_claim: None,
            service_account: None,
            image_pull_secrets: Vec::new(),
            namespace_pod_security: PodSecurity::Baseline,
            prices: BTreeMap::new(),
            spot_prices: BTreeMap::new(),
        }
    }
}

impl KubeBackendConfig {
    /// Reads a TOML file of settings; missing keys keep their defaults.
    pub fn load(path: impl AsRef<Path>) -> Result<KubeBackendConfig, ConfigError> {
        let path = path.as_ref();
        let err = |message: String| ConfigError { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let config: KubeBackendConfig = toml::from_str(&text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        for (table, prices) in [("prices", &self.prices), ("spot_prices", &self.spot_prices)] {
            if let Some((k, v)) = prices.iter().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
                return Err(format!("{table}.{k:?}: {v} must be zero or more"));
            }
        }
        if !self.checkpoint_mount_path.starts_with('/') {
            return Err(format!("checkpoint_mount_path: {:?} must be an absolute path", self.checkpoint_mount_path));
        }
        if self.node_lost_after < Duration::from_secs(10) {
            return Err(format!("node_lost_after: {:?} is shorter than 10s (a node's status is posted every 10s)", self.node_lost_after));
        }
        if self.keep_finished > Duration::from_secs(7 * 24 * 3600) {
            return Err(format!("keep_finished: {:?} is longer than 7 days", self.keep_finished));
        }
        if self.rack_label.is_empty() {
            return Err("rack_label: must not be empty".into());
        }
        Ok(())
    }

    /// The price of a node of `instance_type`, 0 when the table does not list it.
    pub fn price_per_hour_usd(&self, instance_type: &str, spot: bool) -> f64 {
        let spot_price = if spot { self.spot_prices.get(instance_type) } else { None };
        spot_price.or_else(|| self.prices.get(instance_type)).copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_settings_default_and_price_spot_nodes_from_their_table() {
        let c: KubeBackendConfig = toml::from_str("[prices]\n\"g5.12xlarge\" = 5.67\n[spot_prices]\n\"g5.12xlarge\" = 2.1\n").unwrap();
        assert_eq!(c.namespace_prefix, "flotilla-");
        assert_eq!(c.price_per_hour_usd("g5.12xlarge", false), 5.67);
        assert_eq!(c.price_per_hour_usd("g5.12xlarge", true), 2.1);
        assert_eq!(c.price_per_hour_usd("m7i.large", true), 0.0);
    }

    #[test]
    fn namespace_pod_security_defaults_to_baseline_reads_each_level_and_refuses_others() {
        assert_eq!(KubeBackendConfig::default().namespace_pod_security, PodSecurity::Baseline);
        for level in PodSecurity::ALL {
            let c: KubeBackendConfig = toml::from_str(&format!("namespace_pod_security = \"{level}\"\n")).unwrap();
            assert_eq!(c.namespace_pod_security, level);
        }
        let err = toml::from_str::<KubeBackendConfig>("namespace_pod_security = \"lenient\"\n").unwrap_err();
        assert!(err.to_string().contains("namespace_pod_security") && err.to_string().contains("restricted"), "{err}");
    }
}
