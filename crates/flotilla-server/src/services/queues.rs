//! `flotilla.v1.Queues`.

use std::sync::Arc;

use flotilla_api::v1::{self, queues_server::Queues};
use flotilla_model::{TaskState, Verb};
use flotilla_store::cost::usd;
use flotilla_store::Command;
use tonic::{Request, Response, Status};

use crate::auth::{audit, denied, Caller};
use crate::convert::{invalid, queue_from_spec, queue_to_spec};
use crate::Context;

pub struct QueuesService(pub Arc<Context>);

impl QueuesService {
    fn queue_message(&self, name: &str) -> Option<v1::Queue> {
        let shares = self.0.shares.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now_ms = self.0.config.clock.now_ms();
        self.0.read(|s| {
            let q = s.queue(name)?;
            let counts = s.counts(name);
            let share = shares.iter().find(|x| x.queue == name);
            Some(v1::Queue {
                spec: Some(queue_to_spec(q)),
                status: Some(v1::QueueStatus {
                    tasks_by_state: TaskState::ALL.iter().zip(counts).map(|(st, n)| (st.as_str().to_string(), n)).collect(),
                    fair_share: share.map_or(0.0, |x| x.fair_share),
                    actual_share: share.map_or(0.0, |x| x.actual_share),
                    allocated: share.map(|x| (&x.allocated).into()),
                    cost_usd: usd(s.queue_cost(name).total_nano_usd),
                    cost_today_usd: usd(s.queue_spent_today_nano_usd(name, now_ms)),
                    running_cost_usd: usd(s.queue_running_cost_nano_usd(name, now_ms)),
                }),
            })
        })
    }

    /// Whether `caller` may see queue `name`: any verb on it, or a cluster role.
    fn visible(&self, caller: &Caller, name: &str) -> bool {
        let z = self.0.authorizer();
        if z.is_viewer(caller) {
            return true;
        }
        let permits = self.0.read(|s| s.queue(name).map(|q| q.permits.clone())).unwrap_or_default();
        Verb::ALL.iter().any(|v| z.allows(caller, name, &permits, *v))
    }

    /// Updating or deleting a queue: a cluster admin, or `admin` on the queue.
    fn require_queue_admin(&self, caller: &Caller, name: &str, action: &str) -> Result<(), Status> {
        if self.0.authorizer().is_admin(caller) {
            return Ok(());
        }
        self.0.require_on_queue(caller, name, Verb::Admin).map_err(|_| {
            Status::permission_denied(format!(
                "{action} needs the `admin` permission on queue {} or the cluster admin role; {caller} has neither",
                flotilla_model::quote(name)
            ))
        })
    }

    /// [`put`](Self::put) and its audit line.
    async fn put_audited(&self, caller: Caller, spec: Option<v1::QueueSpec>, create: bool) -> Result<Response<v1::Queue>, Status> {
        let name = spec.as_ref().map(|q| flotilla_model::truncate(&q.name, 64)).unwrap_or_default();
        let result = self.put(&caller, spec, create).await;
        audit(&caller, if create { "CreateQueue" } else { "UpdateQueue" }, &format!("queue/{name}"), &result);
        result
    }

    async fn put(&self, caller: &Caller, spec: Option<v1::QueueSpec>, create: bool) -> Result<Response<v1::Queue>, Status> {
        let spec = spec.ok_or_else(|| Status::invalid_argument("queue: is required"))?;
        if create {
            self.0.authorizer().require_admin(caller, "CreateQueue")?;
        } else {
            self.require_queue_admin(caller, &spec.name, "UpdateQueue")?;
        }
        let queue = queue_from_spec(&spec).map_err(|e| invalid(&e))?;
        let name = queue.name.clone();
        self.0.propose_ok(Command::PutQueue { queue, create }).await?;
        self.queue_message(&name).map(Response::new).ok_or_else(|| Status::internal("queue vanished after commit"))
    }
}

#[tonic::async_trait]
impl Queues for QueuesService {
    async fn create_queue(&self, req: Request<v1::CreateQueueRequest>) -> Result<Response<v1::Queue>, Status> {
        self.put_audited(Caller::of(&req), req.into_inner().queue, true).await
    }

    async fn update_queue(&self, req: Request<v1::UpdateQueueRequest>) -> Result<Response<v1::Queue>, Status> {
        self.put_audited(Caller::of(&req), req.into_inner().queue, false).await
    }

    async fn delete_queue(&self, req: Request<v1::DeleteQueueRequest>) -> Result<Response<v1::DeleteQueueResponse>, Status> {
        let caller = Caller::of(&req);
        let name = req.into_inner().name;
        let result = async {
            self.require_queue_admin(&caller, &name, "DeleteQueue")?;
            self.0.propose_ok(Command::DeleteQueue { name: name.clone() }).await?;
            Ok(Response::new(v1::DeleteQueueResponse {}))
        }
        .await;
        audit(&caller, "DeleteQueue", &format!("queue/{}", flotilla_model::truncate(&name, 64)), &result);
        result
    }

    async fn get_queue(&self, req: Request<v1::GetQueueRequest>) -> Result<Response<v1::Queue>, Status> {
        let caller = Caller::of(&req);
        let name = req.into_inner().name;
        // Whether a queue the caller may not see exists is not revealed either.
        if !self.visible(&caller, &name) {
            return Err(denied(&caller, &name, Verb::Watch));
        }
        self.queue_message(&name)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("queue {} does not exist", flotilla_model::quote(&name))))
    }

    async fn list_queues(&self, req: Request<v1::ListQueuesRequest>) -> Result<Response<v1::ListQueuesResponse>, Status> {
        let caller = Caller::of(&req);
        let names: Vec<String> = self.0.read(|s| s.queues().map(|q| q.name.clone()).collect());
        let names: Vec<String> = names.into_iter().filter(|n| self.visible(&caller, n)).collect();
        let queues = names.iter().filter_map(|n| self.queue_message(n)).collect();
        Ok(Response::new(v1::ListQueuesResponse { queues }))
    }
}
