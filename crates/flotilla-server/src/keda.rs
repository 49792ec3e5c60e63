//! KEDA's external scaler (`externalscaler.ExternalScaler`): a queue's depth as a metric,
//! so that KEDA scales a worker Deployment with the work waiting in a Flotilla queue.
//!
//! A ScaledObject's trigger metadata picks what is counted:
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `queue` | the queue | required |
//! | `metric` | `queued`, or `queued-and-running` (leased, pending and running too) | `queued` |
//! | `gpuModel` | only tasks that ask for this GPU model | any |
//! | `cluster` | queued tasks that may run in this cluster, active tasks running there | any |
//! | `targetSize` | tasks per replica KEDA aims for | 1 |
//!
//! KEDA's scaler client sends no bearer token, so the scaler is served twice: on the client
//! port, authorized like every call there (`watch` on the queue, or a cluster role), and,
//! when `--scaler-listen` is given, on a port of its own that serves only this read-only
//! service and the health service, without credentials (docs/clients.md). That port is off
//! by default.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::externalscaler::{
    self as es, external_scaler_server::ExternalScalerServer, GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse,
    IsActiveResponse, MetricSpec, MetricValue, ScaledObjectRef,
};
use flotilla_model::{quote, FieldError, TaskState, Verb};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::convert::invalid;
use crate::Context;

/// The metric's name in GetMetricSpec and GetMetrics.
pub const METRIC_NAME: &str = "flotilla-queue-depth";
/// StreamIsActive looks again at most this often, whatever the rate of changes.
const STREAM_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// ...and at least this often, in case a change was missed.
const STREAM_MAX_INTERVAL: Duration = Duration::from_secs(10);
/// Longest metadata value read (queue names, GPU models, clusters are far shorter).
const MAX_VALUE_BYTES: usize = 253;

/// What one ScaledObject counts.
#[derive(Debug, PartialEq)]
pub struct Target {
    pub queue: String,
    pub include_active: bool,
    pub gpu_model: Option<String>,
    pub cluster: Option<String>,
    pub target_size: i64,
}

/// Reads a ScaledObject's metadata; errors name the key.
pub fn target_of(r: &ScaledObjectRef) -> Result<Target, Status> {
    let m = &r.scaler_metadata;
    let mut errors = Vec::new();
    if let Some((k, _)) = m.iter().find(|(_, v)| v.len() > MAX_VALUE_BYTES) {
        errors.push(FieldError::new(
            format!("scalerMetadata.{}", flotilla_model::truncate(k, 64)),
            format!("is longer than {MAX_VALUE_BYTES} bytes"),
        ));
    }
    let queue = m.get("queue").cloned().unwrap_or_default();
    if queue.is_empty() {
        errors.push(FieldError::new("scalerMetadata.queue", "is required: the Flotilla queue whose depth scales the target"));
    }
    let include_active = match m.get("metric").map(String::as_str) {
        None | Some("queued") => false,
        Some("queued-and-running") => true,
        Some(other) => {
            errors.push(FieldError::new("scalerMetadata.metric", format!("{} is not one of queued, queued-and-running", quote(other))));
            false
        }
    };
    let target_size = match m.get("targetSize").map(|s| s.parse::<i64>()) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            errors.push(FieldError::new("scalerMetadata.targetSize", "must be a whole number of at least 1"));
            1
        }
    };
    if !errors.is_empty() {
        return Err(invalid(&errors));
    }
    let non_empty = |k: &str| m.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(Target { queue, include_active, gpu_model: non_empty("gpuModel"), cluster: non_empty("cluster"), target_size })
}

/// Counts the target's tasks in the replica's state.
pub fn depth(s: &flotilla_store::State, t: &Target) -> u64 {
    if t.gpu_model.is_none() && t.cluster.is_none() {
        let counts = s.counts(&t.queue);
        let counted = |st: TaskState| t.include_active && st.is_active() || st == TaskState::Queued;
        return TaskState::ALL.iter().zip(counts).filter(|(st, _)| counted(**st)).map(|(_, n)| n).sum();
    }
    let gpu_ok = |r: &flotilla_store::TaskRecord| t.gpu_model.is_none() || r.spec.placement.gpu_model == t.gpu_model;
    let queued = s
        .queued()
        .filter(|r| {
            r.spec.queue == t.queue
                && gpu_ok(r)
                && t.cluster
                    .as_ref()
                    .is_none_or(|c| r.spec.placement.allowed_clusters.is_empty() || r.spec.placement.allowed_clusters.contains(c))
        })
        .count() as u64;
    if !t.include_active {
        return queued;
    }
    let active = s
        .active()
        .filter(|r| {
            r.spec.queue == t.queue && gpu_ok(r) && t.cluster.as_ref().is_none_or(|c| r.lease.as_ref().is_some_and(|l| &l.cluster == c))
        })
        .count() as u64;
    queued + active
}

pub struct ScalerService {
    ctx: Arc<Context>,
    /// Served on `--scaler-listen`: depth figures for anyone who reaches that port.
    open: bool,
}

/// The scaler on the client port: callers need `watch` on the queue.
pub fn server(ctx: &Arc<Context>) -> ExternalScalerServer<ScalerService> {
    ExternalScalerServer::new(ScalerService { ctx: ctx.clone(), open: false })
}

/// The scaler on its own port, without credentials (read-only depth figures).
pub fn open_server(ctx: &Arc<Context>) -> ExternalScalerServer<ScalerService> {
    ExternalScalerServer::new(ScalerService { ctx: ctx.clone(), open: true })
}

impl ScalerService {
    /// The target's depth, after the caller's right to see the queue and its existence.
    fn measure<T>(&self, req: &Request<T>, r: &ScaledObjectRef) -> Result<(Target, u64), Status> {
        let t = target_of(r)?;
        if !self.open {
            self.ctx.require_on_queue(&Caller::of(req), &t.queue, Verb::Watch)?;
        }
        let depth = self.ctx.read(|s| s.queue(&t.queue).map(|_| depth(s, &t)));
        let depth = depth.ok_or_else(|| Status::not_found(format!("queue {} does not exist", quote(&t.queue))))?;
        Ok((t, depth))
    }
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl es::external_scaler_server::ExternalScaler for ScalerService {
    async fn is_active(&self, req: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        let (_, depth) = self.measure(&req, req.get_ref())?;
        Ok(Response::new(IsActiveResponse { result: depth > 0 }))
    }

    type StreamIsActiveStream = ActiveStream;

    /// Sends the first answer at once, then each change.
    async fn stream_is_active(&self, req: Request<ScaledObjectRef>) -> Result<Response<ActiveStream>, Status> {
        let (target, initial) = self.measure(&req, req.get_ref())?;
        let (tx, rx) = mpsc::channel(4);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut applied = ctx.replica.applied();
            let mut last = None;
            let mut active = initial > 0;
            loop {
                if last != Some(active) {
                    last = Some(active);
                    if tx.send(Ok(IsActiveResponse { result: active })).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(STREAM_MAX_INTERVAL) => {}
                }
                tokio::time::sleep(STREAM_MIN_INTERVAL).await;
                match ctx.read(|s| s.queue(&target.queue).map(|_| depth(s, &target))) {
                    Some(d) => active = d > 0,
                    None => {
                        let _ = tx.send(Err(Status::not_found(format!("queue {} was deleted", quote(&target.queue))))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metric_spec(&self, req: Request<ScaledObjectRef>) -> Result<Response<GetMetricSpecResponse>, Status> {
        let (t, _) = self.measure(&req, req.get_ref())?;
        let spec = MetricSpec { metric_name: METRIC_NAME.into(), target_size: t.target_size, target_size_float: t.target_size as f64 };
        Ok(Response::new(GetMetricSpecResponse { metric_specs: vec![spec] }))
    }

    async fn get_metrics(&self, req: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let r = req.get_ref().scaled_object_ref.clone().unwrap_or_default();
        let (_, depth) = self.measure(&req, &r)?;
        let name = if req.get_ref().metric_name.is_empty() { METRIC_NAME.to_string() } else { req.get_ref().metric_name.clone() };
        let value = MetricValue { metric_name: name, metric_value: depth as i64, metric_value_float: depth as f64 };
        Ok(Response::new(GetMetricsResponse { metric_values: vec![value] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(pairs: &[(&str, &str)]) -> ScaledObjectRef {
        ScaledObjectRef { scaler_metadata: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Default::default() }
    }

    #[test]
    fn metadata_selects_queue_metric_filters_and_target_size() {
        let t = target_of(&object(&[("queue", "agents"), ("metric", "queued-and-running"), ("gpuModel", "H100"), ("targetSize", "4")]))
            .unwrap();
        assert_eq!(
            t,
            Target { queue: "agents".into(), include_active: true, gpu_model: Some("H100".into()), cluster: None, target_size: 4 }
        );
        assert!(!target_of(&object(&[("queue", "agents")])).unwrap().include_active);
    }

    #[test]
    fn bad_metadata_is_refused_naming_the_key() {
        let e = target_of(&object(&[("metric", "running"), ("targetSize", "0")])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let lines: Vec<&str> = e.message().lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(lines, ["scalerMetadata.queue", "scalerMetadata.metric", "scalerMetadata.targetSize"]);
    }
}
