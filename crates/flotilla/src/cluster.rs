//! `flotilla cluster cordon|uncordon|drain NAME`: taking a cluster out of service.

use std::process::ExitCode;
use std::time::Duration;

use flotilla_api::auth::AuthChannel;
use flotilla_api::v1::{self, clusters_client::ClustersClient};
use serde_json::{json, Value};

use crate::client::Client;
use crate::output::{cluster_json, cluster_state_text, table};
use crate::{ClusterCommand, Failure, Format};

/// Longest `--grace` accepted: a drain that needs more is better watched with `flotilla clusters`.
const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a waiting drain asks how far it got.
const POLL_EVERY: Duration = Duration::from_secs(1);

fn clusters(c: AuthChannel) -> ClustersClient<AuthChannel> {
    ClustersClient::new(c)
}

fn check_name(name: &str) -> Result<(), Failure> {
    if name.is_empty() || name.len() > 253 {
        return Err(Failure::Input(format!("NAME: a cluster name of 1 to 253 bytes, got {} bytes", name.len())));
    }
    Ok(())
}

fn waiting_json(w: &v1::DrainWaiting) -> Value {
    json!({ "taskId": w.task_id, "queue": w.queue, "taskSet": w.task_set, "name": w.name, "priorityClass": w.priority_class, "state": w.state })
}

pub async fn run(client: &Client, command: ClusterCommand, format: Format) -> Result<ExitCode, Failure> {
    match command {
        ClusterCommand::Cordon { name } => cordon(client, name, true, format).await,
        ClusterCommand::Uncordon { name } => cordon(client, name, false, format).await,
        ClusterCommand::Drain { name, grace } => drain(client, name, grace, format).await,
    }
}

async fn cordon(client: &Client, name: String, cordoned: bool, format: Format) -> Result<ExitCode, Failure> {
    check_name(&name)?;
    let r = if cordoned {
        let req = v1::CordonClusterRequest { name: name.clone() };
        client
            .call(|c| {
                let req = req.clone();
                async move { clusters(c).cordon_cluster(req).await }
            })
            .await?
    } else {
        let req = v1::UncordonClusterRequest { name: name.clone() };
        client
            .call(|c| {
                let req = req.clone();
                async move { clusters(c).uncordon_cluster(req).await }
            })
            .await?
    }
    .into_inner();
    let cluster = r.cluster.unwrap_or_default();
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&cluster_json(&cluster)).unwrap_or_default()),
        Format::Table => outln!("cluster {name}: {}", cluster_state_text(&cluster)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn drain(client: &Client, name: String, wait: Option<Duration>, format: Format) -> Result<ExitCode, Failure> {
    check_name(&name)?;
    if wait.is_some_and(|w| w > MAX_WAIT) {
        return Err(Failure::Input("--grace: at most 7d".into()));
    }
    let req = v1::DrainClusterRequest { name: name.clone() };
    let r = client
        .call(|c| {
            let req = req.clone();
            async move { clusters(c).drain_cluster(req).await }
        })
        .await?
        .into_inner();
    let mut cluster = r.cluster.unwrap_or_default();
    match format {
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "cluster": cluster_json(&cluster), "waiting": r.waiting.iter().map(waiting_json).collect::<Vec<_>>() })
            )
            .unwrap_or_default()
        ),
        Format::Table => {
            outln!("cluster {name}: {}", cluster_state_text(&cluster));
            if !r.waiting.is_empty() {
                outln!("not preemptible, left to finish:");
                let rows: Vec<Vec<String>> = r
                    .waiting
                    .iter()
                    .map(|w| {
                        vec![
                            w.task_id.to_string(),
                            w.queue.clone(),
                            w.task_set.clone(),
                            w.name.clone(),
                            w.priority_class.clone(),
                            w.state.clone(),
                        ]
                    })
                    .collect();
                table(&["id", "queue", "task set", "name", "priority class", "state"], &rows);
            }
        }
    }
    let Some(wait) = wait else { return Ok(ExitCode::SUCCESS) };
    let until = tokio::time::Instant::now() + wait;
    let mut last_left = cluster.tasks_left;
    while cluster.drain_state != "drained" {
        if tokio::time::Instant::now() >= until {
            eprintln!("error: cluster {name} is not drained after {}: {} tasks left", humantime::format_duration(wait), cluster.tasks_left);
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(POLL_EVERY).await;
        let list = client.call(|c| async move { clusters(c).list_clusters(v1::ListClustersRequest {}).await }).await?.into_inner();
        cluster = list.clusters.into_iter().find(|c| c.name == name).ok_or_else(|| Failure::Op(format!("cluster {name} is gone")))?;
        if cluster.tasks_left != last_left && format == Format::Table {
            outln!("cluster {name}: {}", cluster_state_text(&cluster));
            last_left = cluster.tasks_left;
        }
    }
    if format == Format::Table {
        outln!("cluster {name}: drained");
    }
    Ok(ExitCode::SUCCESS)
}
