//! `flotilla.v1.PriorityClasses`: operators define the priority classes tasks choose.
//!
//! Creating, updating and deleting need the cluster admin role (a class affects every
//! queue); listing is open to every authenticated caller, who needs the names to write a
//! task file.

use std::sync::Arc;

use flotilla_api::v1::{self, priority_classes_server::PriorityClasses};
use flotilla_model::{quote, truncate, PriorityClass};
use flotilla_store::Command;
use tonic::{Request, Response, Status};

use crate::auth::{audit, Caller};
use crate::convert::invalid;
use crate::Context;

pub struct PriorityClassesService(pub Arc<Context>);

pub fn class_from_proto(c: &v1::PriorityClass) -> PriorityClass {
    PriorityClass { name: c.name.clone(), priority: c.priority, preemptible: c.preemptible, description: c.description.clone() }
}

pub fn class_to_proto(c: &PriorityClass) -> v1::PriorityClass {
    v1::PriorityClass { name: c.name.clone(), priority: c.priority, preemptible: c.preemptible, description: c.description.clone() }
}

impl PriorityClassesService {
    async fn put(&self, caller: &Caller, class: Option<v1::PriorityClass>, create: bool) -> Result<Response<v1::PriorityClass>, Status> {
        let action = if create { "CreatePriorityClass" } else { "UpdatePriorityClass" };
        self.0.authorizer().require_admin(caller, action)?;
        let class = class_from_proto(&class.ok_or_else(|| Status::invalid_argument("priorityClass: is required"))?);
        let errors = class.validate();
        if !errors.is_empty() {
            return Err(invalid(&errors));
        }
        self.0.propose_ok(Command::PutPriorityClass { class: class.clone(), create }).await?;
        Ok(Response::new(class_to_proto(&class)))
    }
}

#[tonic::async_trait]
impl PriorityClasses for PriorityClassesService {
    async fn create_priority_class(&self, req: Request<v1::CreatePriorityClassRequest>) -> Result<Response<v1::PriorityClass>, Status> {
        let caller = Caller::of(&req);
        let class = req.into_inner().priority_class;
        let target = format!("priority-class/{}", class.as_ref().map(|c| truncate(&c.name, 64)).unwrap_or_default());
        let result = self.put(&caller, class, true).await;
        audit(&caller, "CreatePriorityClass", &target, &result);
        result
    }

    async fn update_priority_class(&self, req: Request<v1::UpdatePriorityClassRequest>) -> Result<Response<v1::PriorityClass>, Status> {
        let caller = Caller::of(&req);
        let class = req.into_inner().priority_class;
        let target = format!("priority-class/{}", class.as_ref().map(|c| truncate(&c.name, 64)).unwrap_or_default());
        let result = self.put(&caller, class, false).await;
        audit(&caller, "UpdatePriorityClass", &target, &result);
        result
    }

    async fn delete_priority_class(
        &self,
        req: Request<v1::DeletePriorityClassRequest>,
    ) -> Result<Response<v1::DeletePriorityClassResponse>, Status> {
        let caller = Caller::of(&req);
        let name = req.into_inner().name;
        let result = async {
            self.0.authorizer().require_admin(&caller, "DeletePriorityClass")?;
            if name.is_empty() {
                return Err(Status::invalid_argument(format!("name: {} is required", quote(&name))));
            }
            self.0.propose_ok(Command::DeletePriorityClass { name: name.clone() }).await?;
            Ok(Response::new(v1::DeletePriorityClassResponse {}))
        }
        .await;
        audit(&caller, "DeletePriorityClass", &format!("priority-class/{}", truncate(&name, 64)), &result);
        result
    }

    async fn list_priority_classes(
        &self,
        _req: Request<v1::ListPriorityClassesRequest>,
    ) -> Result<Response<v1::ListPriorityClassesResponse>, Status> {
        let priority_classes = self.0.read(|s| s.priority_classes().values().map(class_to_proto).collect());
        Ok(Response::new(v1::ListPriorityClassesResponse { priority_classes }))
    }
}
