//! `api.Submit`: SubmitJobs, CancelJobs, CancelJobSet, ReprioritizeJobs, Health, as
//! `flotilla.v1.Tasks` calls.

use std::sync::Arc;

use flotilla_api::armada::api::{
    self as armada, CancellationResult, JobCancelRequest, JobReprioritizeRequest, JobReprioritizeResponse, JobSetCancelRequest, JobState,
    JobSubmitRequest, JobSubmitResponse, JobSubmitResponseItem,
};
use flotilla_api::v1::{self, tasks_server::Tasks};
use flotilla_model::{FieldError, TaskId, TaskState};
use tonic::{Request, Response, Status};

use super::{as_v1, jobs};
use crate::auth::Caller;
use crate::convert::invalid;
use crate::services::tasks::{fnv1a64, TasksService, MAX_IDS_PER_GET};
use crate::Context;

pub struct SubmitService(pub Arc<Context>);

impl SubmitService {
    fn tasks(&self) -> TasksService {
        TasksService(self.0.clone())
    }

    /// Cancels tasks by id (in chunks the v1 call accepts) and says which of them are now
    /// cancelled.
    async fn cancel_ids(&self, caller: &Caller, ids: Vec<u64>, reason: &str) -> Result<Vec<String>, Status> {
        for chunk in ids.chunks(MAX_IDS_PER_GET) {
            let req = v1::CancelTasksRequest { task_ids: chunk.to_vec(), reason: reason.to_string(), ..Default::default() };
            self.tasks().cancel_tasks(as_v1(caller, req)).await?;
        }
        Ok(self.0.read(|s| {
            ids.iter().filter(|id| s.task(TaskId(**id)).is_some_and(|t| t.state == TaskState::Cancelled)).map(u64::to_string).collect()
        }))
    }

    /// The ids of a task set's tasks whose state one of Armada's `states` names.
    fn ids_in_states(&self, queue: &str, job_set: &str, states: &[TaskState]) -> Vec<u64> {
        self.0.read(|s| {
            s.task_set(queue, job_set)
                .map(|set| set.tasks.iter().filter(|id| s.task(**id).is_some_and(|t| states.contains(&t.state))).map(|id| id.0).collect())
                .unwrap_or_default()
        })
    }
}

/// Parses Armada job ids, which are Flotilla task ids in decimal.
fn task_ids(field: &str, ids: &[String]) -> Result<Vec<u64>, Status> {
    let errors: Vec<FieldError> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| id.parse::<u64>().is_err())
        .map(|(i, id)| {
            FieldError::new(format!("{field}[{i}]"), format!("{} is not a Flotilla job id (a decimal task id)", flotilla_model::quote(id)))
        })
        .collect();
    if !errors.is_empty() {
        return Err(invalid(&errors));
    }
    Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
}

/// The Flotilla states an Armada job-state filter selects (cancelling only ever matches
/// tasks that are not yet terminal).
fn states_of(filter: &[i32]) -> Result<Vec<TaskState>, Status> {
    let mut states = Vec::new();
    for (i, s) in filter.iter().enumerate() {
        let found = match JobState::try_from(*s) {
            Ok(JobState::Queued | JobState::Submitted) => [TaskState::Queued].as_slice(),
            Ok(JobState::Leased) => &[TaskState::Leased],
            Ok(JobState::Pending) => &[TaskState::Leased, TaskState::Pending],
            Ok(JobState::Running) => &[TaskState::Running],
            _ => {
                return Err(invalid(&[FieldError::new(
                    format!("filter.states[{i}]"),
                    "only QUEUED, SUBMITTED, LEASED, PENDING and RUNNING jobs can be cancelled",
                )]))
            }
        };
        states.extend_from_slice(found);
    }
    Ok(states)
}

/// A request id for Flotilla's dedupe when the jobs carry Armada client ids: a retry of
/// the same request then returns the same job ids instead of submitting twice.
fn client_request_id(r: &JobSubmitRequest) -> String {
    if r.job_request_items.iter().all(|i| i.client_id.is_empty()) {
        return String::new();
    }
    let mut body = Vec::new();
    for part in [r.queue.as_str(), r.job_set_id.as_str()].into_iter().chain(r.job_request_items.iter().map(|i| i.client_id.as_str())) {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    format!("armada-{:016x}", fnv1a64(&body))
}

#[tonic::async_trait]
impl armada::submit_server::Submit for SubmitService {
    async fn submit_jobs(&self, req: Request<JobSubmitRequest>) -> Result<Response<JobSubmitResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        // As SubmitTasks does first: the caller's right, then the request's size, and only
        // then the work of translating it.
        self.0.require_on_queue(&caller, &r.queue, flotilla_model::Verb::Submit)?;
        let most = self.0.config.submit_limits.max_templates_per_submit as usize;
        if r.job_request_items.len() > most {
            let problem = format!("{} items exceed the limit of {most} per request", r.job_request_items.len());
            return Err(invalid(&[FieldError::new("job_request_items", problem)]));
        }
        let t = jobs::translate(&r.job_request_items).map_err(|e| invalid(&e))?;
        let submit = v1::SubmitTasksRequest {
            queue: r.queue.clone(),
            task_set: r.job_set_id.clone(),
            tasks: t.templates,
            client_request_id: client_request_id(&r),
        };
        let ids = match self.tasks().submit_tasks(as_v1(&caller, submit)).await {
            Ok(res) => res.into_inner().task_ids,
            Err(s) => return Err(Status::new(s.code(), jobs::rename_paths(s.message(), &t.first_item))),
        };
        let job_response_items = t
            .slots
            .iter()
            .map(|slot| JobSubmitResponseItem { job_id: ids.get(*slot).map(u64::to_string).unwrap_or_default(), error: String::new() })
            .collect();
        Ok(Response::new(JobSubmitResponse { job_response_items }))
    }

    async fn cancel_jobs(&self, req: Request<JobCancelRequest>) -> Result<Response<CancellationResult>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let mut ids = task_ids("job_ids", &r.job_ids)?;
        if !r.job_id.is_empty() {
            ids.extend(task_ids("job_id", std::slice::from_ref(&r.job_id))?);
        }
        if ids.is_empty() {
            if r.queue.is_empty() || r.job_set_id.is_empty() {
                return Err(invalid(&[FieldError::new("job_ids", "give job ids, or a queue and a job_set_id")]));
            }
            let req =
                v1::CancelTasksRequest { queue: r.queue.clone(), task_set: r.job_set_id.clone(), reason: r.reason, ..Default::default() };
            self.tasks().cancel_tasks(as_v1(&caller, req)).await?;
            let cancelled = self.ids_in_states(&r.queue, &r.job_set_id, &[TaskState::Cancelled]);
            return Ok(Response::new(CancellationResult { cancelled_ids: cancelled.iter().map(u64::to_string).collect() }));
        }
        let cancelled_ids = self.cancel_ids(&caller, ids, &r.reason).await?;
        Ok(Response::new(CancellationResult { cancelled_ids }))
    }

    async fn cancel_job_set(&self, req: Request<JobSetCancelRequest>) -> Result<Response<()>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let states = states_of(&r.filter.as_ref().map(|f| f.states.clone()).unwrap_or_default())?;
        if states.is_empty() {
            let req = v1::CancelTasksRequest { queue: r.queue, task_set: r.job_set_id, reason: r.reason, ..Default::default() };
            self.tasks().cancel_tasks(as_v1(&caller, req)).await?;
            return Ok(Response::new(()));
        }
        // Only the matching jobs: by id, after the same queue check a set cancel makes.
        self.0.require_on_queue(&caller, &r.queue, flotilla_model::Verb::Cancel)?;
        let ids = self.ids_in_states(&r.queue, &r.job_set_id, &states);
        self.cancel_ids(&caller, ids, &r.reason).await?;
        Ok(Response::new(()))
    }

    async fn reprioritize_jobs(&self, _req: Request<JobReprioritizeRequest>) -> Result<Response<JobReprioritizeResponse>, Status> {
        Err(invalid(&[FieldError::new(
            "new_priority",
            "is not supported: Flotilla orders a queue by priority class, then submit time, and a task's class is fixed at submission",
        )]))
    }

    async fn health(&self, _req: Request<()>) -> Result<Response<armada::HealthCheckResponse>, Status> {
        Ok(Response::new(super::health(&self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_that_are_not_task_ids_are_refused_naming_the_entry() {
        assert_eq!(task_ids("job_ids", &["12".into(), "7".into()]).unwrap(), [12, 7]);
        let e = task_ids("job_ids", &["12".into(), "01HXYZ".into()]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("job_ids[1]: \"01HXYZ\""), "{}", e.message());
    }

    #[test]
    fn a_cancel_filter_maps_onto_live_states_and_refuses_terminal_ones() {
        assert_eq!(states_of(&[JobState::Running as i32]).unwrap(), [TaskState::Running]);
        assert!(states_of(&[]).unwrap().is_empty());
        let e = states_of(&[JobState::Queued as i32, JobState::Succeeded as i32]).unwrap_err();
        assert!(e.message().starts_with("filter.states[1]"), "{}", e.message());
    }

    #[test]
    fn client_ids_make_a_stable_request_id_and_no_client_ids_make_none() {
        let item = |id: &str| armada::JobSubmitRequestItem { client_id: id.into(), ..Default::default() };
        let r = JobSubmitRequest { queue: "q".into(), job_set_id: "s".into(), job_request_items: vec![item("a"), item("b")] };
        assert_eq!(client_request_id(&r), client_request_id(&r.clone()));
        assert!(client_request_id(&r).starts_with("armada-"));
        let other = JobSubmitRequest { job_request_items: vec![item("a"), item("c")], ..r.clone() };
        assert_ne!(client_request_id(&r), client_request_id(&other));
        assert_eq!(client_request_id(&JobSubmitRequest { job_request_items: vec![item("")], ..r }), "");
    }
}
