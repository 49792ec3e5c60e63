//! `flotilla replica list|add|remove`: the Raft membership of the scheduler group.

use std::process::ExitCode;

use flotilla_api::auth::AuthChannel;
use flotilla_api::v1::{self, replicas_client::ReplicasClient};
use serde_json::{json, Value};

use crate::client::Client;
use crate::output::table;
use crate::{Failure, Format, ReplicaCommand};

const HEADERS: [&str; 4] = ["id", "url", "role", "leader"];

fn replicas(c: AuthChannel) -> ReplicasClient<AuthChannel> {
    ReplicasClient::new(c)
}

fn member_json(m: &v1::ReplicaMember) -> Value {
    json!({ "id": m.id, "url": m.url, "role": m.role, "isLeader": m.is_leader })
}

fn member_row(m: &v1::ReplicaMember) -> Vec<String> {
    vec![m.id.to_string(), m.url.clone(), m.role.clone(), if m.is_leader { "*".into() } else { String::new() }]
}

fn print_members(members: &[v1::ReplicaMember]) {
    table(&HEADERS, &members.iter().map(member_row).collect::<Vec<_>>());
}

fn print_json(v: &Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn check_id(id: u64) -> Result<(), Failure> {
    if id == 0 {
        return Err(Failure::Input("--id: replica ids start at 1".into()));
    }
    Ok(())
}

pub async fn run(client: &Client, command: ReplicaCommand, format: Format) -> Result<ExitCode, Failure> {
    match command {
        ReplicaCommand::List => {
            let r = client.call(|c| async move { replicas(c).list_replicas(v1::ListReplicasRequest {}).await }).await?.into_inner();
            let show = |i: Option<u64>| i.map_or_else(|| "-".to_string(), |i| i.to_string());
            match format {
                Format::Json => print_json(&json!({
                    "answeredBy": r.answered_by,
                    "term": r.term,
                    "leaderId": r.leader_id,
                    "commitIndex": r.commit_index,
                    "appliedIndex": r.applied_index,
                    "installationId": r.installation_id,
                    "replicas": r.replicas.iter().map(member_json).collect::<Vec<_>>(),
                })),
                Format::Table => {
                    print_members(&r.replicas);
                    outln!(
                        "\ninstallation {}; as replica {} sees it: term {}, leader {}, commit index {}, applied index {}",
                        if r.installation_id.is_empty() { "(not named yet)" } else { r.installation_id.as_str() },
                        r.answered_by,
                        r.term,
                        show(r.leader_id),
                        show(r.commit_index),
                        show(r.applied_index)
                    );
                }
            }
        }
        ReplicaCommand::Add { id, url } => {
            check_id(id)?;
            let url = url.trim().to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Failure::Input(format!("--url: {url:?} must start with http:// or https://")));
            }
            let req = v1::AddReplicaRequest { id, url };
            let r = client
                .call(|c| {
                    let req = req.clone();
                    async move { replicas(c).add_replica(req).await }
                })
                .await?
                .into_inner();
            match format {
                Format::Json => print_json(&json!({ "added": id, "replicas": r.replicas.iter().map(member_json).collect::<Vec<_>>() })),
                Format::Table => {
                    outln!("added replica {id} as a voter");
                    print_members(&r.replicas);
                }
            }
        }
        ReplicaCommand::Remove { id } => {
            check_id(id)?;
            let req = v1::RemoveReplicaRequest { id };
            let r = client.call(|c| async move { replicas(c).remove_replica(req).await }).await?.into_inner();
            match format {
                Format::Json => print_json(&json!({ "removed": id, "replicas": r.replicas.iter().map(member_json).collect::<Vec<_>>() })),
                Format::Table => {
                    outln!("removed replica {id}; stop it and delete its data directory");
                    print_members(&r.replicas);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
