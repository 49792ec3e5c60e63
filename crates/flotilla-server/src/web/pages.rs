//! The console's HTML pages, rendered on the server: queues (`/`), tasks (`/tasks`, with a
//! filter form and paging in GET parameters), one task (`/tasks/{id}`) and clusters
//! (`/clusters`). Every page works without JavaScript; `console.js` re-fetches the page every
//! few seconds and swaps its `#live` part, so tables update without a reload. Everything
//! that comes from the state or the request is escaped ([`esc`]) or URL-encoded ([`link`]).

use std::fmt::Write as _;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use flotilla_model::{format_bytes, format_cpu_millis, TaskState};
use std::sync::Arc;

use super::views::{self, TaskQuery, MAX_PAGE};
use crate::auth::Caller;
use crate::cost::dollars;
use crate::Context;

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `path?k=v&…` with the values URL-encoded, then HTML-escaped for an attribute.
fn link(path: &str, params: &[(&str, &str)]) -> String {
    let params: Vec<(&str, &str)> = params.iter().copied().filter(|(_, v)| !v.is_empty()).collect();
    let query = serde_urlencoded::to_string(&params).unwrap_or_default();
    esc(&if query.is_empty() { path.to_string() } else { format!("{path}?{query}") })
}

/// "12s ago", "3m ago", "2h ago" from `then_ms` to `now_ms`.
fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// An absolute UTC time, second precision (RFC 3339).
fn utc(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

fn time_cell(now_ms: u64, ms: u64) -> String {
    format!("<time title=\"{}\">{}</time>", utc(ms), ago(now_ms, ms))
}

fn layout(ctx: &Context, title: &str, nav: &str, before_live: &str, live: &str) -> Html<String> {
    let mut h = String::with_capacity(live.len() + 2048);
    let leader = ctx.replica.leader_id().map_or("none".to_string(), |l| l.to_string());
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{} · Flotilla</title><link rel=stylesheet href=/static/console.css><script src=/static/console.js defer></script>\
         </head><body><header><h1>Flotilla</h1><nav>",
        esc(title)
    );
    for (href, name) in [("/", "Queues"), ("/tasks", "Tasks"), ("/clusters", "Clusters")] {
        let class = if name == nav { " class=here" } else { "" };
        let _ = write!(h, "<a href={href}{class}>{name}</a>");
    }
    let _ = write!(
        h,
        "</nav><p class=meta>replica {} · leader {} · term {} · <span id=updated>live</span></p></header>{before_live}\
         <main id=live>{live}</main><footer><a href=/metrics>metrics</a> · <a href=/api/queues>queues JSON</a> · \
         <a href=/api/clusters>clusters JSON</a> · <a href=/api/tasks>tasks JSON</a></footer></body></html>",
        ctx.config.id,
        leader,
        ctx.replica.current_term()
    );
    Html(h)
}

/// CPU millis as cores: "12", "0.5".
fn cores(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{:.1}", millis as f64 / 1000.0)
    }
}

fn share_bar(fair: f64, actual: f64) -> String {
    let (f, a) = ((fair * 100.0).clamp(0.0, 100.0), (actual * 100.0).clamp(0.0, 100.0));
    format!(
        "<div class=bar title=\"fair {f:.1}% / actual {a:.1}%\"><span class=actual style=\"width:{a:.1}%\"></span>\
         <span class=fair style=\"left:{f:.1}%\"></span></div>"
    )
}

/// `/`: every queue the caller may watch, with its fair and actual share, tasks and cost.
pub async fn queues(State(ctx): State<Arc<Context>>, Extension(caller): Extension<Caller>) -> Html<String> {
    let qs = views::queues(&ctx, &caller);
    let mut h = String::from("<h2>Queues</h2><table id=queues><thead><tr><th>queue</th><th class=r>weight</th><th>share (actual, | fair)</th><th class=r>fair</th><th class=r>actual</th>");
    for st in TaskState::ALL {
        let _ = write!(h, "<th class=r>{st}</th>");
    }
    h.push_str("<th class=r>cost</th><th class=r>today</th><th class=r>running</th></tr></thead><tbody>");
    for q in &qs {
        let _ = write!(
            h,
            "<tr><td><a href=\"{}\">{}</a></td><td class=r>{}</td><td>{}</td><td class=r>{:.1}%</td><td class=r>{:.1}%</td>",
            link("/tasks", &[("queue", &q.name)]),
            esc(&q.name),
            q.weight,
            share_bar(q.fair_share, q.actual_share),
            q.fair_share * 100.0,
            q.actual_share * 100.0
        );
        for st in TaskState::ALL {
            let n = q.tasks.get(st.as_str()).copied().unwrap_or(0);
            let _ = write!(h, "<td class=r><a href=\"{}\">{n}</a></td>", link("/tasks", &[("queue", &q.name), ("state", st.as_str())]));
        }
        let today = if q.budget_usd_per_day > 0.0 {
            let over = if q.cost_today_usd >= q.budget_usd_per_day { " class=\"r over\"" } else { " class=r" };
            format!("<td{over}>{} / {}</td>", dollars(q.cost_today_usd), dollars(q.budget_usd_per_day))
        } else {
            format!("<td class=r>{}</td>", dollars(q.cost_today_usd))
        };
        let _ = write!(h, "<td class=\"r cost\">{}</td>{today}<td class=r>{}</td></tr>", dollars(q.cost_usd), dollars(q.running_cost_usd));
    }
    if qs.is_empty() {
        h.push_str("<tr><td colspan=15 class=empty>no queues you may watch</td></tr>");
    }
    h.push_str("</tbody></table><p class=note>cost: ended attempts (node price × hours run × the task's share of the node); today: since 00:00 UTC, with running attempts so far.</p>");
    layout(&ctx, "Queues", "Queues", "", &h)
}

fn filter_form(q: &TaskQuery) -> String {
    let v = |x: &Option<String>| esc(x.as_deref().unwrap_or(""));
    let mut h = String::from("<form id=filters method=get action=/tasks>");
    let _ = write!(h, "<label>queue <input name=queue value=\"{}\" size=14></label>", v(&q.queue));
    let _ = write!(h, "<label>task set <input name=task_set value=\"{}\" size=14></label>", v(&q.task_set));
    h.push_str("<label>state <select name=state><option value=\"\">any</option>");
    for st in TaskState::ALL {
        let sel = if q.state.as_deref() == Some(st.as_str()) { " selected" } else { "" };
        let _ = write!(h, "<option{sel}>{st}</option>");
    }
    h.push_str("</select></label>");
    let _ = write!(h, "<label>cluster <input name=cluster value=\"{}\" size=14></label>", v(&q.cluster));
    let _ = write!(h, "<label>per page <input name=limit type=number min=1 max={MAX_PAGE} value={}></label>", q.page_size());
    h.push_str("<button type=submit>Filter</button> <a href=/tasks>clear</a></form>");
    h
}

/// `/tasks`: the task table, newest first, filtered and paged by GET parameters.
pub async fn tasks(State(ctx): State<Arc<Context>>, Extension(caller): Extension<Caller>, Query(q): Query<TaskQuery>) -> Html<String> {
    let (page, next) = views::tasks(&ctx, &caller, &q);
    let now_ms = ctx.config.clock.now_ms();
    let mut h = String::from(
        "<table id=tasks><thead><tr><th class=r>id</th><th>queue</th><th>task set</th><th>name</th><th>state</th>\
         <th class=r>attempt</th><th>cluster/node</th><th class=r>cost</th><th>updated</th><th>reason</th></tr></thead><tbody>",
    );
    for t in &page {
        let place = if t.cluster.is_empty() { String::new() } else { format!("{}/{}", esc(&t.cluster), esc(&t.node)) };
        let _ = write!(
            h,
            "<tr><td class=r><a href=\"/tasks/{id}\">{id}</a></td><td>{}</td><td><a href=\"{}\">{}</a></td><td>{}[{}]</td>\
             <td><span class=\"state {st}\">{st}</span></td><td class=r>{}</td><td>{place}</td><td class=r>{}</td><td>{}</td><td class=reason>{}</td></tr>",
            esc(&t.queue),
            link("/tasks", &[("queue", &t.queue), ("task_set", &t.task_set)]),
            esc(&t.task_set),
            esc(&t.name),
            t.index,
            t.attempt,
            dollars(t.cost_usd),
            time_cell(now_ms, t.updated_ms),
            esc(&t.reason),
            id = t.id,
            st = esc(&t.state),
        );
    }
    if page.is_empty() {
        h.push_str("<tr><td colspan=10 class=empty>no matching tasks</td></tr>");
    }
    h.push_str("</tbody></table><p class=pager>");
    let size = q.page_size().to_string();
    let keep = |before: &str| {
        let f = |x: &Option<String>| x.clone().unwrap_or_default();
        let (queue, set, state, cluster) = (f(&q.queue), f(&q.task_set), f(&q.state), f(&q.cluster));
        link(
            "/tasks",
            &[("queue", &queue), ("task_set", &set), ("state", &state), ("cluster", &cluster), ("limit", &size), ("before", before)],
        )
    };
    if q.before.is_some() {
        let _ = write!(h, "<a href=\"{}\">« newest</a> ", keep(""));
    }
    if let Some(next) = next {
        let _ = write!(h, "<a href=\"{}\" id=older>older »</a>", keep(&next.to_string()));
    }
    let _ = write!(h, " <span class=note>{} shown</span></p>", page.len());
    layout(&ctx, "Tasks", "Tasks", &filter_form(&q), &h)
}

/// `/tasks/{id}`: one task, its attempts and its event timeline. 404 for a task that does not
/// exist or that the caller may not watch.
pub async fn task(State(ctx): State<Arc<Context>>, Extension(caller): Extension<Caller>, Path(id): Path<u64>) -> Response {
    let Some(d) = views::task_detail(&ctx, &caller, id) else {
        return (StatusCode::NOT_FOUND, layout(&ctx, "Not found", "Tasks", "", &format!("<p>no task {id}</p>"))).into_response();
    };
    let now_ms = ctx.config.clock.now_ms();
    let t = &d.task;
    let mut h = String::new();
    let _ = write!(
        h,
        "<h2>Task {} · {}[{}]</h2><dl class=facts><dt>state</dt><dd><span class=\"state {st}\">{st}</span></dd>\
         <dt>queue / task set</dt><dd><a href=\"{}\">{}</a> / <a href=\"{}\">{}</a></dd><dt>attempt</dt><dd>{}</dd>\
         <dt>placement</dt><dd>{}</dd><dt>reason</dt><dd class=reason>{}</dd><dt>resources</dt><dd>{} CPU, {} memory, {} GPU</dd>\
         <dt>image</dt><dd><code>{}</code></dd><dt>priority class</dt><dd>{}</dd><dt>submitted</dt><dd>{}</dd>\
         <dt>cost</dt><dd>{}{}</dd><dt>exit code</dt><dd>{}</dd></dl>",
        t.id,
        esc(&t.name),
        t.index,
        link("/tasks", &[("queue", &t.queue)]),
        esc(&t.queue),
        link("/tasks", &[("queue", &t.queue), ("task_set", &t.task_set)]),
        esc(&t.task_set),
        t.attempt,
        if t.cluster.is_empty() { "-".to_string() } else { format!("{} / {}", esc(&t.cluster), esc(&t.node)) },
        esc(&t.reason),
        format_cpu_millis(d.cpu_millis),
        format_bytes(d.memory_bytes),
        d.gpu,
        esc(&d.image),
        esc(&d.priority_class),
        time_cell(now_ms, d.submitted_ms),
        dollars(t.cost_usd),
        if d.cost_per_hour_usd > 0.0 { format!(" (now {}/h)", dollars(d.cost_per_hour_usd)) } else { String::new() },
        d.exit_code.map_or("-".to_string(), |c| c.to_string()),
        st = esc(&t.state),
    );
    h.push_str(
        "<h3>Attempts</h3><table id=attempts><thead><tr><th class=r>attempt</th><th>cluster/node</th><th>leased</th>\
         <th>running</th><th>ended</th><th>outcome</th><th class=r>cost</th><th>reason</th></tr></thead><tbody>",
    );
    for a in &d.attempts {
        let opt = |ms: Option<u64>| ms.map_or("-".to_string(), |ms| time_cell(now_ms, ms));
        let _ = write!(
            h,
            "<tr><td class=r>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=r>{}</td><td class=reason>{}</td></tr>",
            a.attempt,
            esc(&a.cluster),
            esc(&a.node),
            time_cell(now_ms, a.leased_ms),
            opt(a.running_ms),
            opt(a.ended_ms),
            if a.outcome.is_empty() { "(current)".to_string() } else { esc(&a.outcome) },
            dollars(a.cost_usd),
            esc(&a.reason)
        );
    }
    if d.attempts.is_empty() {
        h.push_str("<tr><td colspan=8 class=empty>not leased yet</td></tr>");
    }
    h.push_str("</tbody></table><h3>Events</h3>");
    if d.events_cut {
        let _ = write!(h, "<p class=note>the newest {} events</p>", d.events.len());
    }
    h.push_str("<ol id=timeline>");
    for e in &d.events {
        let place = if e.cluster.is_empty() { String::new() } else { format!(" on {}/{}", esc(&e.cluster), esc(&e.node)) };
        let reason = if e.reason.is_empty() { String::new() } else { format!(": {}", esc(&e.reason)) };
        let cost = if e.cost_usd > 0.0 { format!(" ({})", dollars(e.cost_usd)) } else { String::new() };
        let _ = write!(
            h,
            "<li><span class=seq>#{}</span> {} <b class=\"state {k}\">{k}</b> attempt {}{place}{reason}{cost}</li>",
            e.seq,
            time_cell(now_ms, e.time_ms),
            e.attempt,
            k = esc(&e.kind),
        );
    }
    h.push_str("</ol>");
    layout(&ctx, &format!("Task {}", t.id), "Tasks", "", &h).into_response()
}

/// `/clusters`: state, health, capacity by GPU model and price of every cluster.
pub async fn clusters(State(ctx): State<Arc<Context>>) -> Html<String> {
    let cs = views::clusters(&ctx);
    // Capacity and sync times are the leader's soft state: another replica does not know them.
    let leader = ctx.is_leader();
    let mut h = String::from(
        "<h2>Clusters</h2><table id=clusters><thead><tr><th>cluster</th><th>state</th><th>health</th><th class=r>nodes</th>\
         <th>GPUs by model (used / allocatable)</th><th class=r>CPU cores used</th><th class=r>memory used</th><th class=r>tasks</th>\
         <th class=r>price/h</th><th>last sync</th></tr></thead><tbody>",
    );
    for c in &cs {
        // Healthy: registered ready and synced within the last few seconds.
        let health = match (c.state.as_str(), c.last_sync_age_ms) {
            ("lost", _) => "<span class=\"health bad\">lost</span>",
            _ if !leader => "<span class=note>known to the leader</span>",
            (_, age) if c.nodes == 0 || age > 10_000 => "<span class=\"health warn\">not syncing</span>",
            _ => "<span class=\"health ok\">syncing</span>",
        };
        let mut gpus = String::new();
        for g in &c.gpu_models {
            let _ = write!(gpus, "<div>{}: {} / {} <small>({} nodes)</small></div>", esc(&g.model), g.used, g.allocatable, g.nodes);
        }
        if gpus.is_empty() {
            gpus.push_str("<span class=note>none</span>");
        }
        let _ = write!(
            h,
            "<tr><td><a href=\"{}\">{}</a></td><td class=cstate>{}</td><td>{health}</td><td class=r>{}</td><td>{gpus}</td>\
             <td class=r>{} / {}</td><td class=r>{} / {}</td><td class=r>{}</td><td class=r>{}</td><td>{:.1}s ago</td></tr>",
            link("/tasks", &[("cluster", &c.name)]),
            esc(&c.name),
            esc(&c.state_text()),
            c.nodes,
            cores(c.cpu_used_millis),
            cores(c.cpu_allocatable_millis),
            format_bytes(c.memory_used_bytes),
            format_bytes(c.memory_allocatable_bytes),
            c.active_tasks,
            dollars(c.price_per_hour_usd),
            c.last_sync_age_ms as f64 / 1000.0
        );
    }
    if cs.is_empty() {
        h.push_str("<tr><td colspan=10 class=empty>no clusters yet</td></tr>");
    }
    h.push_str("</tbody></table>");
    layout(&ctx, "Clusters", "Clusters", "", &h)
}
