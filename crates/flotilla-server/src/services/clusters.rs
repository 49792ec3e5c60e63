//! `flotilla.v1.Clusters`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::time::Instant;

use flotilla_api::v1::{self, clusters_server::Clusters};
use flotilla_model::Resources;
use flotilla_store::{ClusterState, Command, DrainState};
use tonic::{Request, Response, Status};

use crate::auth::{audit, Caller};
use crate::Context;

/// Most non-preemptible tasks a drain's answer lists (`tasks_left` counts them all).
const MAX_WAITING_LISTED: usize = 1_000;
/// Longest cluster name accepted (a Kubernetes name).
const MAX_CLUSTER_NAME_BYTES: usize = 253;

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
                let drain = s.cluster_drain(&c.name);
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
                    cordoned: c.cordoned,
                    draining: c.draining,
                    tasks_left: drain.as_ref().map_or(0, |d| d.tasks_left as u32),
                    drain_state: drain.map_or(DrainState::Schedulable, |d| d.state).as_str().to_string(),
                }
            })
            .collect()
    })
}

fn cluster_named(ctx: &Context, name: &str) -> Result<v1::Cluster, Status> {
    list(ctx).into_iter().find(|c| c.name == name).ok_or_else(|| Status::internal("cluster vanished after commit"))
}

fn valid_name(name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > MAX_CLUSTER_NAME_BYTES {
        return Err(Status::invalid_argument(format!(
            "name: must be a cluster name of 1 to {MAX_CLUSTER_NAME_BYTES} bytes, got {} bytes",
            name.len()
        )));
    }
    Ok(())
}

impl ClustersService {
    /// Cordon or uncordon, for a cluster admin.
    async fn cordon(&self, caller: &Caller, name: &str, cordoned: bool) -> Result<Response<v1::CordonClusterResponse>, Status> {
        self.0.authorizer().require_admin(caller, if cordoned { "CordonCluster" } else { "UncordonCluster" })?;
        valid_name(name)?;
        self.0.propose_ok(Command::CordonCluster { cluster: name.to_string(), cordoned }).await?;
        // Uncordoned capacity may take queued work at once.
        self.0.schedule_now.notify_one();
        Ok(Response::new(v1::CordonClusterResponse { cluster: Some(cluster_named(&self.0, name)?) }))
    }

    async fn drain(&self, caller: &Caller, name: &str) -> Result<Response<v1::DrainClusterResponse>, Status> {
        self.0.authorizer().require_admin(caller, "DrainCluster")?;
        valid_name(name)?;
        self.0.propose_ok(Command::DrainCluster { cluster: name.to_string() }).await?;
        self.0.schedule_now.notify_one();
        let waiting = self.0.read(|s| {
            let ids = s.cluster_drain(name).map(|d| d.waiting_for).unwrap_or_default();
            ids.iter()
                .take(MAX_WAITING_LISTED)
                .filter_map(|id| s.task(*id))
                .map(|t| v1::DrainWaiting {
                    task_id: t.id.0,
                    queue: t.spec.queue.clone(),
                    task_set: t.spec.task_set.clone(),
                    name: t.spec.name.clone(),
                    priority_class: t.spec.priority_class.clone(),
                    state: t.state.as_str().to_string(),
                })
                .collect()
        });
        Ok(Response::new(v1::DrainClusterResponse { cluster: Some(cluster_named(&self.0, name)?), waiting }))
    }
}

#[tonic::async_trait]
impl Clusters for ClustersService {
    async fn cordon_cluster(&self, req: Request<v1::CordonClusterRequest>) -> Result<Response<v1::CordonClusterResponse>, Status> {
        let caller = Caller::of(&req);
        let name = req.into_inner().name;
        let result = self.cordon(&caller, &name, true).await;
        audit(&caller, "CordonCluster", &format!("cluster/{}", flotilla_model::truncate(&name, 64)), &result);
        result
    }

    async fn uncordon_cluster(&self, req: Request<v1::UncordonClusterRequest>) -> Result<Response<v1::CordonClusterResponse>, Status> {
        let caller = Caller::of(&req);
        let name = req.into_inner().name;
        let result = self.cordon(&caller, &name, false).await;
        audit(&caller, "UncordonCluster", &format!("cluster/{}", flotilla_model::truncate(&name, 64)), &result);
        result
    }

    async fn drain_cluster(&self, req: Request<v1::DrainClusterRequest>) -> Result<Response<v1::DrainClusterResponse>, Status> {
        let caller = Caller::of(&req);
        let name = req.into_inner().name;
        let result = self.drain(&caller, &name).await;
        audit(&caller, "DrainCluster", &format!("cluster/{}", flotilla_model::truncate(&name, 64)), &result);
        result
    }

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
