//! `flotilla.v1.Clusters`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::time::Instant;

use flotilla_api::v1::{self, clusters_server::Clusters};
use flotilla_model::Resources;
use flotilla_store::ClusterState;
use tonic::{Request, Response, Status};

use crate::Context;

pub struct ClustersService(pub Arc<Context>);

/// The cluster list as this replica sees it. Capacity comes from executor reports, which
/// only the leader receives: followers show the registry with empty capacity.
pub fn list(ctx: &Context) -> Vec<v1::Cluster> {
    let (capacity, models) = {
        let cap = ctx.capacity.lock().unwrap_or_else(|e| e.into_inner());
        let models: BTreeMap<String, HashMap<String, String>> =
            cap.reports.keys().map(|c| (c.clone(), cap.gpu_model_of_nodes(c))).collect();
        (cap.summaries(Instant::now()), models)
    };
    ctx.read(|s| {
        s.clusters()
            .map(|c| {
                let report = capacity.get(&c.name);
                let model_of = models.get(&c.name);
                let mut used = Resources::default();
                let mut gpu_used: BTreeMap<&str, u64> = BTreeMap::new();
                let mut active = 0;
                for t in s.active_in(&c.name) {
                    used.add(&t.spec.resources);
                    active += 1;
                    let model = t.lease.as_ref().and_then(|l| model_of.and_then(|m| m.get(&l.node)));
                    if let (Some(m), true) = (model, t.spec.resources.gpu > 0) {
                        *gpu_used.entry(m.as_str()).or_default() += t.spec.resources.gpu;
                    }
                }
                let gpu_capacity = report
                    .map(|r| &r.gpu_by_model)
                    .into_iter()
                    .flatten()
                    .map(|(model, (nodes, gpus))| v1::GpuCapacity {
                        model: model.clone(),
                        nodes: *nodes,
                        allocatable: *gpus,
                        used: gpu_used.get(model.as_str()).copied().unwrap_or(0),
                    })
                    .collect();
                v1::Cluster {
                    name: c.name.clone(),
                    state: match c.state {
                        ClusterState::Ready => "ready".into(),
                        ClusterState::Lost => "lost".into(),
                    },
                    nodes: report.map_or(0, |r| r.nodes as u32),
                    allocatable: Some((&report.map(|r| r.allocatable.clone()).unwrap_or_default()).into()),
                    used: Some((&used).into()),
                    last_sync_age_ms: report.map_or(0, |r| r.age.as_millis() as u64),
                    active_tasks: active,
                    gpu_models: report.map(|r| r.gpu_models.iter().cloned().collect()).unwrap_or_default(),
                    price_per_hour_usd: report.map_or(0.0, |r| r.price_per_hour_usd),
                    gpu_capacity,
                }
            })
            .collect()
    })
}

#[tonic::async_trait]
impl Clusters for ClustersService {
    /// Every user may see the clusters and their capacity: submitters size work by them.
    async fn list_clusters(&self, _req: Request<v1::ListClustersRequest>) -> Result<Response<v1::ListClustersResponse>, Status> {
        if !self.0.is_leader() {
            if let Some(channel) = self.0.leader_channel() {
                let mut client = v1::clusters_client::ClustersClient::new(channel);
                if let Ok(r) = client.list_clusters(v1::ListClustersRequest {}).await {
                    return Ok(r);
                }
            }
        }
        Ok(Response::new(v1::ListClustersResponse { clusters: list(&self.0) }))
    }
}
