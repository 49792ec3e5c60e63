//! `flotilla priority-class create|update|delete|list`.

use std::process::ExitCode;

use flotilla_api::auth::AuthChannel;
use flotilla_api::v1::{self, priority_classes_client::PriorityClassesClient};
use serde_json::{json, Value};

use crate::client::Client;
use crate::output::table;
use crate::{Failure, Format, PriorityClassArgs, PriorityClassCommand};

const HEADERS: [&str; 4] = ["name", "priority", "preemptible", "description"];

fn classes(c: AuthChannel) -> PriorityClassesClient<AuthChannel> {
    PriorityClassesClient::new(c)
}

fn class_json(c: &v1::PriorityClass) -> Value {
    json!({ "name": c.name, "priority": c.priority, "preemptible": c.preemptible, "description": c.description })
}

fn class_row(c: &v1::PriorityClass) -> Vec<String> {
    vec![c.name.clone(), c.priority.to_string(), c.preemptible.to_string(), c.description.clone()]
}

fn class_of(a: &PriorityClassArgs) -> v1::PriorityClass {
    v1::PriorityClass { name: a.name.clone(), priority: a.priority, preemptible: a.preemptible, description: a.description.clone() }
}

pub async fn run(client: &Client, command: PriorityClassCommand, format: Format) -> Result<ExitCode, Failure> {
    let shown = match command {
        PriorityClassCommand::Create(a) => {
            let req = v1::CreatePriorityClassRequest { priority_class: Some(class_of(&a)) };
            vec![client
                .call(|c| {
                    let req = req.clone();
                    async move { classes(c).create_priority_class(req).await }
                })
                .await?
                .into_inner()]
        }
        PriorityClassCommand::Update(a) => {
            let req = v1::UpdatePriorityClassRequest { priority_class: Some(class_of(&a)) };
            vec![client
                .call(|c| {
                    let req = req.clone();
                    async move { classes(c).update_priority_class(req).await }
                })
                .await?
                .into_inner()]
        }
        PriorityClassCommand::Delete { name } => {
            let req = v1::DeletePriorityClassRequest { name: name.clone() };
            client
                .call(|c| {
                    let req = req.clone();
                    async move { classes(c).delete_priority_class(req).await }
                })
                .await?;
            if format == Format::Table {
                outln!("deleted priority class {name}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        PriorityClassCommand::List => {
            client
                .call(|c| async move { classes(c).list_priority_classes(v1::ListPriorityClassesRequest {}).await })
                .await?
                .into_inner()
                .priority_classes
        }
    };
    match format {
        Format::Json => {
            outln!("{}", serde_json::to_string_pretty(&Value::Array(shown.iter().map(class_json).collect())).unwrap_or_default())
        }
        Format::Table => table(&HEADERS, &shown.iter().map(class_row).collect::<Vec<_>>()),
    }
    Ok(ExitCode::SUCCESS)
}
