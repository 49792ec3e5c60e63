//! The headless Service of each gang (see [`crate::gang`]): created before a member's Job,
//! deleted once no live Job of the gang is left.
//!
//! Level-triggered like the Jobs: a reflector follows the installation's Services, and every
//! `attempts` call deletes (at most [`MAX_SERVICE_DELETES_PER_CALL`]) those whose gang has
//! no live Job here, so a Service outlives neither an executor restart nor a Job removed
//! by its TTL. A Service younger than [`SERVICE_MIN_AGE_MS`] is left alone: its first Job
//! may not have reached the Job cache yet.

use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::Api;

use super::jobs::{attempt_of, gang_of, gang_service};
use super::KubeBackend;
use crate::backend::BackendError;
use flotilla_api::v1::LeasedTask;

/// A gang's Service is kept at least this long after it was created (ms).
pub const SERVICE_MIN_AGE_MS: u64 = 60_000;
/// Bounds the API calls one `attempts` call makes for Services.
pub const MAX_SERVICE_DELETES_PER_CALL: usize = 16;

impl KubeBackend {
    /// Creates the Service of `task`'s gang unless it exists. A refusal (RBAC without
    /// `services`, a quota) is logged and the member starts anyway: its names do not resolve,
    /// which a gang that needs them reports as its own failure; an outage is retried.
    pub(super) async fn ensure_gang_service(&self, task: &LeasedTask, namespace: &str) -> Result<(), BackendError> {
        let Some(service) = gang_service(task, &self.installation, &self.config) else { return Ok(()) };
        let name = service.metadata.name.clone().unwrap_or_default();
        // Every member of a gang asks; once the cache has it, nothing is sent.
        if self.gang_services.get(&ObjectRef::new(&name).within(namespace)).is_some() {
            return Ok(());
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let mut result = api.create(&PostParams::default(), &service).await;
        if matches!(&result, Err(kube::Error::Api(s)) if s.code == 404 && self.config.create_namespaces) {
            self.create_namespace(namespace).await.map_err(|e| self.unavailable(&format!("creating namespace {namespace}"), e))?;
            result = api.create(&PostParams::default(), &service).await;
        }
        match result {
            Ok(_) => {
                tracing::info!(cluster = %self.cluster, gang_id = task.gang_id, service = %name, %namespace, "created gang service");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => {
                tracing::warn!(cluster = %self.cluster, gang_id = task.gang_id, service = %name, code = s.code, message = %s.message, "gang service refused; members start without their DNS names");
                Ok(())
            }
            Err(e) => Err(self.unavailable(&format!("creating Service {namespace}/{name}"), e)),
        }
    }

    /// True when a Job of gang `gang_id` in `namespace` is neither being deleted nor one
    /// this process deleted.
    fn gang_has_live_job(&self, namespace: &str, gang_id: u64) -> bool {
        let stopping = self.lock().stopping.clone();
        self.jobs.state().iter().any(|j| {
            gang_of(&j.metadata) == Some(gang_id)
                && j.metadata.namespace.as_deref() == Some(namespace)
                && j.metadata.deletion_timestamp.is_none()
                && attempt_of(&j.metadata).is_none_or(|key| !stopping.contains(&key))
        })
    }

    /// Deletes the gang Services whose gang has no live Job here, oldest first, at most
    /// [`MAX_SERVICE_DELETES_PER_CALL`]; `min_age_ms` protects Services just created.
    pub(super) async fn delete_unused_gang_services(&self, only_gang: Option<u64>, min_age_ms: u64) -> Result<(), BackendError> {
        let now_ms = self.now_ms();
        let mut unused: Vec<(String, String)> = Vec::new();
        for s in self.gang_services.state() {
            let (Some(gang), Some(name), Some(namespace)) = (gang_of(&s.metadata), s.metadata.name.clone(), s.metadata.namespace.clone())
            else {
                continue;
            };
            let created_ms = s.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_millisecond().max(0) as u64);
            if only_gang.is_some_and(|g| g != gang)
                || s.metadata.deletion_timestamp.is_some()
                || now_ms.saturating_sub(created_ms) < min_age_ms
                || self.gang_has_live_job(&namespace, gang)
            {
                continue;
            }
            unused.push((namespace, name));
        }
        for (namespace, name) in unused.into_iter().take(MAX_SERVICE_DELETES_PER_CALL) {
            let api: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(cluster = %self.cluster, service = %name, %namespace, "deleted gang service"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.unavailable(&format!("deleting Service {namespace}/{name}"), e)),
            }
        }
        Ok(())
    }
}
