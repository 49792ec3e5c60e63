//! The subcommands.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;

use flotilla_api::auth::AuthChannel;
use flotilla_api::v1::{self, clusters_client::ClustersClient, queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_model::{TaskFile, TaskState};

use crate::client::{Client, MAX_MESSAGE_BYTES};
use crate::output::{self, table, table_part};
use crate::{Cli, Command, Failure, Format, QueueArgs, QueueCommand};

fn tasks(c: AuthChannel) -> TasksClient<AuthChannel> {
    TasksClient::new(c).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn print_json(v: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let format = cli.output;
    match cli.command {
        Command::Server(a) => crate::dev::server(a).await,
        Command::Executor(a) => {
            let token =
                flotilla_api::auth::BearerToken::from_flags(cli.token.as_deref(), cli.token_file.as_deref()).map_err(Failure::Input)?;
            crate::dev::executor(&cli.server, cli.ca_cert.as_deref(), token, a).await
        }
        Command::Dev(a) => crate::dev::dev(a, format).await,
        Command::Auth(a) => crate::dev::auth(a),
        other => {
            let token =
                flotilla_api::auth::BearerToken::from_flags(cli.token.as_deref(), cli.token_file.as_deref()).map_err(Failure::Input)?;
            let client = Client::new(&cli.server, crate::dev::dial(cli.ca_cert.as_deref())?, token).map_err(Failure::Input)?;
            client_command(&client, other, format).await
        }
    }
}

async fn client_command(client: &Client, command: Command, format: Format) -> Result<ExitCode, Failure> {
    match command {
        Command::Queue(q) => queue(client, q, format).await,
        Command::Submit(a) => {
            let text = std::fs::read_to_string(&a.file).map_err(|e| Failure::Input(format!("{}: {e}", a.file.display())))?;
            let file = TaskFile::from_yaml(&text).map_err(|e| Failure::Input(format!("{}: {}", a.file.display(), e.message)))?;
            let queue =
                a.queue.or(file.queue.clone()).ok_or_else(|| Failure::Input("queue: not set in the file nor with --queue".into()))?;
            let task_set = a
                .task_set
                .or(file.task_set.clone())
                .ok_or_else(|| Failure::Input("taskSet: not set in the file nor with --task-set".into()))?;
            // One id for every try, so a retry on another replica creates nothing twice.
            let request_id = a.request_id.unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                format!("cli-{}-{nanos:x}", std::process::id())
            });
            let req = v1::SubmitTasksRequest {
                queue: queue.clone(),
                task_set: task_set.clone(),
                tasks: file.tasks.iter().map(flotilla_api::template_to_proto).collect(),
                client_request_id: request_id,
            };
            let resp = client
                .call(|c| {
                    let req = req.clone();
                    async move { tasks(c).submit_tasks(req).await }
                })
                .await?
                .into_inner();
            for w in &resp.warnings {
                eprintln!("warning: {w}");
            }
            match format {
                Format::Json => print_json(&serde_json::json!({"queue": queue, "taskSet": task_set, "taskIds": resp.task_ids})),
                Format::Table => outln!(
                    "submitted {} tasks to {queue}/{task_set} (ids {}..={})",
                    resp.task_ids.len(),
                    resp.task_ids.first().copied().unwrap_or(0),
                    resp.task_ids.last().copied().unwrap_or(0)
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get(a) => get(client, a, format).await,
        Command::Watch(a) => watch(client, a, format).await,
        Command::Logs(a) => logs(client, a).await,
        Command::Cancel(a) => {
            let by_set = a.queue.is_some() || a.task_set.is_some();
            if a.ids.is_empty() != by_set || (by_set && (a.queue.is_none() || a.task_set.is_none())) {
                return Err(Failure::Input("give task ids, or both --queue and --task-set".into()));
            }
            let req = v1::CancelTasksRequest {
                task_ids: a.ids,
                queue: a.queue.unwrap_or_default(),
                task_set: a.task_set.unwrap_or_default(),
                reason: a.reason,
            };
            let resp = client
                .call(|c| {
                    let req = req.clone();
                    async move { tasks(c).cancel_tasks(req).await }
                })
                .await?
                .into_inner();
            match format {
                Format::Json => print_json(&serde_json::json!({"cancelled": resp.cancelled})),
                Format::Table => outln!("cancelled {} tasks", resp.cancelled),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume(a) => {
            let req = v1::ResumeTaskSetRequest { queue: a.queue.clone(), task_set: a.task_set.clone() };
            client
                .call(|c| {
                    let req = req.clone();
                    async move { tasks(c).resume_task_set(req).await }
                })
                .await?;
            if format == Format::Table {
                outln!("resumed {}/{}", a.queue, a.task_set);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Clusters => {
            let resp =
                client.call(|c| async move { ClustersClient::new(c).list_clusters(v1::ListClustersRequest {}).await }).await?.into_inner();
            match format {
                Format::Json => print_json(&serde_json::Value::Array(resp.clusters.iter().map(output::cluster_json).collect())),
                Format::Table => table(&output::CLUSTER_HEADERS, &resp.clusters.iter().map(output::cluster_row).collect::<Vec<_>>()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replica(r) => crate::replicas::run(client, r, format).await,
        Command::Cluster(c) => crate::cluster::run(client, c, format).await,
        Command::PriorityClass(p) => crate::priority_classes::run(client, p, format).await,
        Command::Server(_) | Command::Executor(_) | Command::Dev(_) | Command::Auth(_) => unreachable!("handled in run"),
    }
}

/// Largest page the server returns.
const MAX_PAGE: usize = 10_000;

/// `get`: tasks by id; or the first `--limit` tasks of a listing, with a hint on standard
/// error when more match; or, with `--all`, every page, printed as it arrives so that the
/// listing starts at once and memory stays one page whatever the number of tasks.
async fn get(client: &Client, a: crate::GetArgs, format: Format) -> Result<ExitCode, Failure> {
    if !a.ids.is_empty() {
        let req = v1::GetTasksRequest { task_ids: a.ids.clone(), linearizable: a.linearizable };
        let list = client
            .call(|c| {
                let req = req.clone();
                async move { tasks(c).get_tasks(req).await }
            })
            .await?
            .into_inner()
            .tasks;
        print_tasks(&list, format);
        return Ok(ExitCode::SUCCESS);
    }
    if a.task_set.is_some() && a.queue.is_none() {
        return Err(Failure::Input("--task-set needs --queue".into()));
    }
    if a.limit == 0 || a.limit > MAX_PAGE {
        return Err(Failure::Input(format!("--limit must be within 1..={MAX_PAGE}")));
    }
    let filter = (a.queue.clone().unwrap_or_default(), a.task_set.clone().unwrap_or_default(), a.state.clone().unwrap_or_default());
    let json = matches!(format, Format::Json);
    let mut shown: Vec<v1::Task> = Vec::new();
    let (mut after_id, mut count) = (0, 0usize);
    let mut set_cost: (f64, f64);
    // With a task set named and a table: its total cost (every page's answer carries it).
    let total = |(all, ended): (f64, f64)| {
        if let (Some(queue), Some(set), false) = (&a.queue, &a.task_set, json) {
            outln!("task set {queue}/{set} cost {} ({} by ended attempts)", output::dollars(all), output::dollars(ended));
        }
    };
    if a.all && json {
        outln!("[");
    }
    loop {
        let want = if a.all { a.limit } else { a.limit - shown.len() };
        let page = list_page(client, &filter, want, after_id, a.linearizable).await?;
        set_cost = (page.task_set_cost_usd, page.task_set_ended_cost_usd);
        if a.all {
            // Streamed: one JSON object per line inside one array, or table pages.
            if json {
                let lines: Vec<String> =
                    page.tasks.iter().map(|t| serde_json::to_string(&output::task_json(t)).unwrap_or_default()).collect();
                if !lines.is_empty() {
                    output::emit(&format!("{}{}\n", if count > 0 { "," } else { "" }, lines.join(",\n")));
                }
            } else {
                table_part(&output::TASK_HEADERS, &page.tasks.iter().map(output::task_row).collect::<Vec<_>>(), after_id == 0);
            }
            count += page.tasks.len();
        } else {
            shown.extend(page.tasks);
        }
        if page.next_after_id == 0 {
            break;
        }
        after_id = page.next_after_id;
        if !a.all && shown.len() >= a.limit {
            print_tasks(&shown, format);
            total(set_cost);
            eprintln!("(the first {} matching tasks; more match: `--all` lists every one)", shown.len());
            return Ok(ExitCode::SUCCESS);
        }
    }
    if a.all {
        if json {
            outln!("]");
        }
    } else {
        print_tasks(&shown, format);
    }
    total(set_cost);
    Ok(ExitCode::SUCCESS)
}

fn print_tasks(list: &[v1::Task], format: Format) {
    match format {
        Format::Json => print_json(&serde_json::Value::Array(list.iter().map(output::task_json).collect())),
        Format::Table => table(&output::TASK_HEADERS, &list.iter().map(output::task_row).collect::<Vec<_>>()),
    }
}

/// One page of tasks matching `(queue, task set, state)` after `after_id`. A page may be
/// short, even empty, with more to come: the server bounds how much it scans per call.
async fn list_page(
    client: &Client,
    (queue, task_set, state): &(String, String, String),
    limit: usize,
    after_id: u64,
    linearizable: bool,
) -> Result<v1::ListTasksResponse, Failure> {
    let req = v1::ListTasksRequest {
        queue: queue.clone(),
        task_set: task_set.clone(),
        state: state.clone(),
        limit: limit.min(MAX_PAGE) as u32,
        after_id,
        linearizable,
    };
    Ok(client
        .call(|c| {
            let req = req.clone();
            async move { tasks(c).list_tasks(req).await }
        })
        .await?
        .into_inner())
}

/// Every task matching the filters, page by page.
async fn list_all(client: &Client, queue: String, task_set: String, state: String, linearizable: bool) -> Result<Vec<v1::Task>, Failure> {
    let mut all = Vec::new();
    let mut after_id = 0;
    let filter = (queue, task_set, state);
    loop {
        let page = list_page(client, &filter, MAX_PAGE, after_id, linearizable).await?;
        all.extend(page.tasks);
        if page.next_after_id == 0 {
            return Ok(all);
        }
        after_id = page.next_after_id;
    }
}

/// Parses `nvidia.com/gpu=8,cpu=64` into a map; the server checks the quantities.
fn resource_map(flag: &str, s: &str) -> Result<HashMap<String, String>, Failure> {
    let mut m = HashMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| Failure::Input(format!("--{flag}: {part:?} is not RESOURCE=QUANTITY")))?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(m)
}

fn queue_spec(a: &QueueArgs) -> Result<v1::QueueSpec, Failure> {
    Ok(v1::QueueSpec {
        name: a.name.clone(),
        weight: a.weight,
        guarantee: resource_map("guarantee", &a.guarantee)?,
        limit: resource_map("limit", &a.limit)?,
        owner: a.owner.clone(),
        disruption_budget: a.disruption_budget,
        permits: a
            .permits
            .iter()
            .map(|p| {
                let p = flotilla_model::Permit::parse(p).map_err(|e| Failure::Input(format!("--permit: {e}")))?;
                Ok(v1::QueuePermit { subject: p.subject.to_string(), verbs: p.verbs.iter().map(|v| v.as_str().to_string()).collect() })
            })
            .collect::<Result<_, Failure>>()?,
        budget_usd_per_day: a.budget_usd_per_day,
        protected_fraction: a.protected_fraction,
        priority_class_limits: a.class_limits.iter().map(flotilla_api::class_limit_to_proto).collect(),
    })
}

async fn queue(client: &Client, q: QueueCommand, format: Format) -> Result<ExitCode, Failure> {
    let queues = |c: AuthChannel| QueuesClient::new(c);
    let shown = match q {
        QueueCommand::Create(a) => {
            let req = v1::CreateQueueRequest { queue: Some(queue_spec(&a)?) };
            vec![client
                .call(|c| {
                    let req = req.clone();
                    async move { queues(c).create_queue(req).await }
                })
                .await?
                .into_inner()]
        }
        QueueCommand::Update(a) => {
            let req = v1::UpdateQueueRequest { queue: Some(queue_spec(&a)?) };
            vec![client
                .call(|c| {
                    let req = req.clone();
                    async move { queues(c).update_queue(req).await }
                })
                .await?
                .into_inner()]
        }
        QueueCommand::Delete { name } => {
            let req = v1::DeleteQueueRequest { name: name.clone() };
            client
                .call(|c| {
                    let req = req.clone();
                    async move { queues(c).delete_queue(req).await }
                })
                .await?;
            if format == Format::Table {
                outln!("deleted queue {name}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        QueueCommand::Get { name } => {
            let req = v1::GetQueueRequest { name };
            vec![client
                .call(|c| {
                    let req = req.clone();
                    async move { queues(c).get_queue(req).await }
                })
                .await?
                .into_inner()]
        }
        QueueCommand::List => {
            client.call(|c| async move { queues(c).list_queues(v1::ListQueuesRequest {}).await }).await?.into_inner().queues
        }
    };
    match format {
        Format::Json => print_json(&serde_json::Value::Array(shown.iter().map(output::queue_json).collect())),
        Format::Table => table(&output::QUEUE_HEADERS, &shown.iter().map(output::queue_row).collect::<Vec<_>>()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams events; with `--until-done`, exits when every task of the set is finished.
async fn watch(client: &Client, a: crate::WatchArgs, format: Format) -> Result<ExitCode, Failure> {
    // Current states first, so that a trimmed event log cannot hide a task.
    let mut states: BTreeMap<u64, String> = BTreeMap::new();
    if a.until_done {
        for t in list_all(client, a.queue.clone(), a.task_set.clone(), String::new(), false).await? {
            states.insert(t.id, t.state);
        }
        if states.is_empty() {
            return Err(Failure::Input(format!("task set {}/{} has no tasks", a.queue, a.task_set)));
        }
    }
    let done = |states: &BTreeMap<u64, String>| {
        !states.is_empty() && states.values().all(|s| TaskState::parse(s).is_some_and(TaskState::is_terminal))
    };
    // On a terminal: the events scroll above a bar of the task set's finished tasks.
    let bars = crate::progress::live(format)
        .then(|| crate::progress::Bars::new(&[(format!("{}/{}", a.queue, a.task_set), states.len() as u64)], &[]));
    let show = |states: &BTreeMap<u64, String>| {
        if let Some(bars) = &bars {
            let finished = states.values().filter(|s| TaskState::parse(s).is_some_and(TaskState::is_terminal)).count() as u64;
            let running = states.values().filter(|s| s.as_str() == "running").count();
            bars.set(0, finished, states.len() as u64, format!("running {running}"));
        }
    };
    show(&states);
    let mut next_seq = a.from_seq.max(1);
    loop {
        if a.until_done && done(&states) {
            break;
        }
        let req = v1::WatchRequest { queue: a.queue.clone(), task_set: a.task_set.clone(), from_seq: next_seq };
        let mut stream = match client
            .call(|c| {
                let req = req.clone();
                async move { tasks(c).watch(req).await }
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) => return Err(e.into()),
        };
        let mut interrupted = false;
        loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    next_seq = e.seq + 1;
                    match (&bars, format) {
                        (Some(bars), _) => bars.println(&output::event_line(&e)),
                        (None, Format::Json) => outln!("{}", serde_json::to_string(&event_json(&e)).unwrap_or_default()),
                        (None, Format::Table) => outln!("{}", output::event_line(&e)),
                    }
                    if e.task_id != 0 {
                        let known = states.get(&e.task_id).and_then(|s| TaskState::parse(s));
                        // Terminal states are final: an older event never overrides one.
                        if !known.is_some_and(TaskState::is_terminal) {
                            states.insert(e.task_id, e.state.clone());
                        }
                        show(&states);
                    }
                    if a.until_done && done(&states) {
                        break;
                    }
                }
                Ok(None) => break,
                Err(s) if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown => {
                    // The replica went away: resume from the next sequence number elsewhere.
                    eprintln!("watch interrupted ({}); resuming from event {next_seq}", s.message());
                    interrupted = true;
                    break;
                }
                Err(s) => return Err(s.into()),
            }
        }
        // A stream ends only when its replica goes away: resume on the next one that answers
        // (a plain watch runs until Ctrl-C; the client gives up when no replica answers).
        let finished = a.until_done && done(&states);
        if !interrupted && !finished {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    if let Some(bars) = &bars {
        bars.finish();
    }
    let failed = states.values().filter(|s| s.as_str() != "succeeded").count();
    if format == Format::Table {
        outln!("{} tasks finished: {} succeeded, {failed} did not", states.len(), states.len() - failed);
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn event_json(e: &v1::TaskEvent) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq, "taskId": e.task_id, "taskName": e.task_name, "taskIndex": e.task_index, "attempt": e.attempt,
        "kind": e.kind, "state": e.state, "cluster": e.cluster, "node": e.node, "reason": e.reason,
        "timeMs": e.time_ms, "exitCode": e.exit_code,
    })
}

/// `flotilla logs`: the attempt's output, as it arrives, on stdout. A closed stdout (`| head`)
/// ends it quietly.
async fn logs(client: &Client, a: crate::LogsArgs) -> Result<ExitCode, Failure> {
    use std::io::Write as _;
    if a.attempt == Some(0) {
        return Err(Failure::Input("--attempt: attempts are numbered from 1".into()));
    }
    let req = v1::LogsRequest {
        task_id: a.task,
        attempt: a.attempt.unwrap_or(0),
        follow: a.follow,
        tail_lines: a.tail.unwrap_or(0),
        limit_bytes: a.limit_bytes.unwrap_or(0),
    };
    let mut stream = client.call(|c| async move { tasks(c).logs(req).await }).await?.into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.message().await? {
        if !chunk.cluster.is_empty() {
            eprintln!("# task {} attempt {} on {}/{}", a.task, chunk.attempt, chunk.cluster, chunk.node);
        }
        if out.write_all(&chunk.data).and_then(|_| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        if chunk.truncated {
            eprintln!("# output cut at the byte limit");
        }
    }
    Ok(ExitCode::SUCCESS)
}
