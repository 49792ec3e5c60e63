//! `api.QueueService` as `flotilla.v1.Queues` calls.
//!
//! An Armada queue's `priority_factor` p is a Flotilla weight of 1/p (a larger factor is a
//! smaller share in both). Owners get the `admin` permit on the queue; Armada permissions
//! become permits with the same verbs where Flotilla has them (submit, cancel, watch).

use std::pin::Pin;
use std::sync::Arc;

use flotilla_api::armada::api::{
    self as armada, queue::permissions::Subject, queue::Permissions, streaming_queue_message, BatchQueueCreateResponse,
    BatchQueueUpdateResponse, QueueCreateResponse, QueueDeleteRequest, QueueGetRequest, QueueList, QueueUpdateResponse,
    StreamingQueueGetRequest, StreamingQueueMessage,
};
use flotilla_api::v1::{self, queues_server::Queues};
use flotilla_model::FieldError;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::as_v1;
use crate::auth::Caller;
use crate::convert::invalid;
use crate::services::queues::QueuesService;
use crate::Context;

/// The verbs of an Armada queue permission that Flotilla's permits have too (`admin` is
/// Flotilla's own, for owners).
const VERBS: [&str; 4] = ["submit", "cancel", "watch", "admin"];

pub struct QueueService(pub Arc<Context>);

/// An Armada queue as a Flotilla queue spec; refuses what Flotilla's queues cannot hold.
pub fn spec_of(q: &armada::Queue) -> Result<v1::QueueSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    if !(q.priority_factor.is_finite() && q.priority_factor > 0.0) {
        errors.push(FieldError::new(
            "priority_factor",
            format!("{} must be above 0 (a queue's weight is 1/priority_factor)", q.priority_factor),
        ));
    }
    for (field, set) in [
        ("resource_limits", !q.resource_limits.is_empty()),
        ("resource_limits_by_priority_class_name", !q.resource_limits_by_priority_class_name.is_empty()),
        ("cordoned", q.cordoned),
        ("labels", !q.labels.is_empty() || !q.labels_deprecated.is_empty()),
        ("retry_policies", !q.retry_policies.is_empty()),
    ] {
        if set {
            errors.push(FieldError::new(
                field,
                "is not supported by Flotilla (see docs/armada.md; quotas are set with flotilla.v1 or `flotilla queue`)",
            ));
        }
    }
    let owner_permit = |subject: String| v1::QueuePermit { subject, verbs: vec!["admin".into()] };
    let mut permits: Vec<v1::QueuePermit> = q.user_owners.iter().map(|u| owner_permit(format!("user:{u}"))).collect();
    permits.extend(q.group_owners.iter().map(|g| owner_permit(format!("group:{g}"))));
    for (i, p) in q.permissions.iter().enumerate() {
        for (j, verb) in p.verbs.iter().enumerate() {
            if !VERBS.contains(&verb.as_str()) {
                errors.push(FieldError::new(
                    format!("permissions[{i}].verbs[{j}]"),
                    format!("{} is not supported: Flotilla's queue verbs are submit, cancel, watch and admin", flotilla_model::quote(verb)),
                ));
            }
        }
        for (j, s) in p.subjects.iter().enumerate() {
            let kind = match s.kind.to_ascii_lowercase().as_str() {
                "user" => "user",
                "group" => "group",
                _ => {
                    errors.push(FieldError::new(format!("permissions[{i}].subjects[{j}].kind"), "must be User or Group"));
                    continue;
                }
            };
            permits.push(v1::QueuePermit { subject: format!("{kind}:{}", s.name), verbs: p.verbs.clone() });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(v1::QueueSpec {
        name: q.name.clone(),
        weight: 1.0 / q.priority_factor,
        owner: q.user_owners.first().cloned().unwrap_or_default(),
        permits,
        ..Default::default()
    })
}

/// A Flotilla queue as Armada sees it: weight w is priority factor 1/w; `admin` permits of
/// one subject are owners.
pub fn queue_of(spec: &v1::QueueSpec) -> armada::Queue {
    let mut q = armada::Queue {
        name: spec.name.clone(),
        priority_factor: if spec.weight > 0.0 { 1.0 / spec.weight } else { 0.0 },
        ..Default::default()
    };
    for p in &spec.permits {
        let (kind, name) = p.subject.split_once(':').unwrap_or(("user", p.subject.as_str()));
        if p.verbs == ["admin"] {
            let owners = if kind == "group" { &mut q.group_owners } else { &mut q.user_owners };
            owners.push(name.to_string());
            continue;
        }
        let kind = if kind == "group" { "Group" } else { "User" };
        q.permissions.push(Permissions { subjects: vec![Subject { kind: kind.into(), name: name.into() }], verbs: p.verbs.clone() });
    }
    q
}

impl QueueService {
    fn queues(&self) -> QueuesService {
        QueuesService(self.0.clone())
    }

    async fn create(&self, caller: &Caller, q: &armada::Queue) -> Result<(), Status> {
        let spec = spec_of(q).map_err(|e| invalid(&e))?;
        self.queues().create_queue(as_v1(caller, v1::CreateQueueRequest { queue: Some(spec) })).await?;
        Ok(())
    }

    /// Replaces what Armada's queue says (weight, owner, permits) and keeps what only
    /// Flotilla's has (guarantee, limit, disruption budget, daily budget, protected fraction,
    /// per-class limits).
    async fn update(&self, caller: &Caller, q: &armada::Queue) -> Result<(), Status> {
        let spec = spec_of(q).map_err(|e| invalid(&e))?;
        let kept = self.0.read(|s| s.queue(&q.name).map(crate::convert::queue_to_spec)).unwrap_or_default();
        let spec = v1::QueueSpec {
            guarantee: kept.guarantee,
            limit: kept.limit,
            disruption_budget: kept.disruption_budget,
            budget_usd_per_day: kept.budget_usd_per_day,
            protected_fraction: kept.protected_fraction,
            priority_class_limits: kept.priority_class_limits,
            ..spec
        };
        self.queues().update_queue(as_v1(caller, v1::UpdateQueueRequest { queue: Some(spec) })).await?;
        Ok(())
    }
}

impl QueueService {
    /// Creates (or updates) each queue of a batch in turn; the queues refused, with why.
    async fn each(&self, caller: &Caller, list: QueueList, create: bool) -> Vec<(armada::Queue, String)> {
        let mut failed = Vec::new();
        for q in list.queues {
            let result = if create { self.create(caller, &q).await } else { self.update(caller, &q).await };
            if let Err(s) = result {
                failed.push((q, s.message().to_string()));
            }
        }
        failed
    }
}

type QueueStream = Pin<Box<dyn Stream<Item = Result<StreamingQueueMessage, Status>> + Send>>;

#[tonic::async_trait]
impl armada::queue_service_server::QueueService for QueueService {
    async fn create_queue(&self, req: Request<armada::Queue>) -> Result<Response<()>, Status> {
        self.create(&Caller::of(&req), req.get_ref()).await.map(Response::new)
    }

    async fn create_queues(&self, req: Request<QueueList>) -> Result<Response<BatchQueueCreateResponse>, Status> {
        let caller = Caller::of(&req);
        let failed = self.each(&caller, req.into_inner(), true).await;
        let failed_queues = failed.into_iter().map(|(queue, error)| QueueCreateResponse { queue: Some(queue), error }).collect();
        Ok(Response::new(BatchQueueCreateResponse { failed_queues }))
    }

    async fn update_queue(&self, req: Request<armada::Queue>) -> Result<Response<()>, Status> {
        self.update(&Caller::of(&req), req.get_ref()).await.map(Response::new)
    }

    async fn update_queues(&self, req: Request<QueueList>) -> Result<Response<BatchQueueUpdateResponse>, Status> {
        let caller = Caller::of(&req);
        let failed = self.each(&caller, req.into_inner(), false).await;
        let failed_queues = failed.into_iter().map(|(queue, error)| QueueUpdateResponse { queue: Some(queue), error }).collect();
        Ok(Response::new(BatchQueueUpdateResponse { failed_queues }))
    }

    async fn delete_queue(&self, req: Request<QueueDeleteRequest>) -> Result<Response<()>, Status> {
        let caller = Caller::of(&req);
        let name = req.into_inner().name;
        self.queues().delete_queue(as_v1(&caller, v1::DeleteQueueRequest { name })).await?;
        Ok(Response::new(()))
    }

    async fn get_queue(&self, req: Request<QueueGetRequest>) -> Result<Response<armada::Queue>, Status> {
        let caller = Caller::of(&req);
        let name = req.into_inner().name;
        let q = self.queues().get_queue(as_v1(&caller, v1::GetQueueRequest { name })).await?.into_inner();
        Ok(Response::new(queue_of(&q.spec.unwrap_or_default())))
    }

    type GetQueuesStream = QueueStream;

    async fn get_queues(&self, req: Request<StreamingQueueGetRequest>) -> Result<Response<QueueStream>, Status> {
        let caller = Caller::of(&req);
        let most = match req.into_inner().num {
            0 => usize::MAX,
            n => n as usize,
        };
        let listed = self.queues().list_queues(as_v1(&caller, v1::ListQueuesRequest {})).await?.into_inner().queues;
        let mut messages: Vec<Result<StreamingQueueMessage, Status>> = listed
            .iter()
            .take(most)
            .map(|q| {
                Ok(StreamingQueueMessage {
                    event: Some(streaming_queue_message::Event::Queue(queue_of(q.spec.as_ref().unwrap_or(&Default::default())))),
                })
            })
            .collect();
        messages.push(Ok(StreamingQueueMessage { event: Some(streaming_queue_message::Event::End(armada::EndMarker {})) }));
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_factor_is_the_inverse_of_weight_and_owners_are_admins_both_ways() {
        let q = armada::Queue {
            name: "ml".into(),
            priority_factor: 4.0,
            user_owners: vec!["ana".into()],
            group_owners: vec!["ml-team".into()],
            permissions: vec![Permissions {
                subjects: vec![Subject { kind: "Group".into(), name: "interns".into() }],
                verbs: vec!["submit".into(), "watch".into()],
            }],
            ..Default::default()
        };
        let spec = spec_of(&q).unwrap();
        assert_eq!(spec.weight, 0.25);
        assert_eq!(spec.owner, "ana");
        let subjects: Vec<&str> = spec.permits.iter().map(|p| p.subject.as_str()).collect();
        assert_eq!(subjects, ["user:ana", "group:ml-team", "group:interns"]);
        let back = queue_of(&spec);
        assert_eq!(
            (back.priority_factor, back.user_owners.clone(), back.group_owners.clone()),
            (4.0, vec!["ana".to_string()], vec!["ml-team".to_string()])
        );
        assert_eq!(back.permissions, q.permissions);
    }

    #[test]
    fn what_flotilla_queues_cannot_hold_is_refused_naming_the_field() {
        let q = armada::Queue {
            name: "q".into(),
            priority_factor: 0.0,
            resource_limits: [("cpu".to_string(), 0.5)].into(),
            cordoned: true,
            permissions: vec![Permissions {
                subjects: vec![Subject { kind: "Robot".into(), name: "r".into() }],
                verbs: vec!["preempt".into()],
            }],
            ..Default::default()
        };
        let paths: Vec<String> = spec_of(&q).unwrap_err().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["priority_factor", "resource_limits", "cordoned", "permissions[0].verbs[0]", "permissions[0].subjects[0].kind"]);
    }
}
