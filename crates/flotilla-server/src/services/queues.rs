//! `flotilla.v1.Queues`.

use std::sync::Arc;

use flotilla_api::v1::{self, queues_server::Queues};
use flotilla_model::TaskState;
use flotilla_store::Command;
use tonic::{Request, Response, Status};

use crate::convert::{invalid, queue_from_spec, queue_to_spec};
use crate::Context;

pub struct QueuesService(pub Arc<Context>);

impl QueuesService {
    fn queue_message(&self, name: &str) -> Option<v1::Queue> {
        let shares = self.0.shares.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
                }),
            })
        })
    }

    async fn put(&self, spec: Option<v1::QueueSpec>, create: bool) -> Result<Response<v1::Queue>, Status> {
        let spec = spec.ok_or_else(|| Status::invalid_argument("queue: is required"))?;
        let queue = queue_from_spec(&spec).map_err(|e| invalid(&e))?;
        let name = queue.name.clone();
        self.0.propose_ok(Command::PutQueue { queue, create }).await?;
        self.queue_message(&name).map(Response::new).ok_or_else(|| Status::internal("queue vanished after commit"))
    }
}

#[tonic::async_trait]
impl Queues for QueuesService {
    async fn create_queue(&self, req: Request<v1::CreateQueueRequest>) -> Result<Response<v1::Queue>, Status> {
        self.put(req.into_inner().queue, true).await
    }

    async fn update_queue(&self, req: Request<v1::UpdateQueueRequest>) -> Result<Response<v1::Queue>, Status> {
        self.put(req.into_inner().queue, false).await
    }

    async fn delete_queue(&self, req: Request<v1::DeleteQueueRequest>) -> Result<Response<v1::DeleteQueueResponse>, Status> {
        let name = req.into_inner().name;
        self.0.propose_ok(Command::DeleteQueue { name }).await?;
        Ok(Response::new(v1::DeleteQueueResponse {}))
    }

    async fn get_queue(&self, req: Request<v1::GetQueueRequest>) -> Result<Response<v1::Queue>, Status> {
        let name = req.into_inner().name;
        self.queue_message(&name)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("queue {} does not exist", flotilla_model::quote(&name))))
    }

    async fn list_queues(&self, _req: Request<v1::ListQueuesRequest>) -> Result<Response<v1::ListQueuesResponse>, Status> {
        let names: Vec<String> = self.0.read(|s| s.queues().map(|q| q.name.clone()).collect());
        let queues = names.iter().filter_map(|n| self.queue_message(n)).collect();
        Ok(Response::new(v1::ListQueuesResponse { queues }))
    }
}
