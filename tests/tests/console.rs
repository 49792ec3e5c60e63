//! The web console in a real browser (issue 16, item 5): `flotilla dev` on free ports with
//! tasks in two queues, and headless Chromium (Debian's `chromium`) loading each page after
//! its JavaScript ran (`--dump-dom` with a virtual time budget): each page shows its data,
//! the filter form's GET parameters filter the task table, and nothing from a URL is run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_tests::{flotilla_cli, repo_root, start_dev, DevProcess};

const CHROMIUM: &str = "/usr/bin/chromium";

fn require_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the console test drives headless Chromium; install it with `apt-get install -y chromium` (Debian)"
    );
}

/// The DOM of `url` after its scripts ran for `budget_ms` of virtual time.
fn dump_dom(url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let (out, killed) = flotilla_tests::wait_output(child, Duration::from_secs(90));
    assert!(!killed, "chromium did not finish loading {url} within 90 s");
    assert!(out.status.success(), "chromium failed on {url}: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows of the table with `id` in a dumped DOM (each `<tr>…</tr>` of its body).
fn rows(dom: &str, id: &str) -> Vec<String> {
    let start = dom.find(&format!("<table id=\"{id}\"")).unwrap_or_else(|| panic!("no table #{id} in:\n{dom}"));
    let table = &dom[start..start + dom[start..].find("</table>").unwrap()];
    let body = &table[table.find("<tbody>").unwrap()..];
    body.split("<tr>").skip(1).map(|r| r.split("</tr>").next().unwrap().to_string()).collect()
}

fn cli(dev: &DevProcess, args: &[&str]) -> String {
    let (ok, out, err) = flotilla_cli(&dev.grpc, args);
    assert!(ok, "flotilla {args:?} failed:\n{out}\n{err}");
    out
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what} not within {within:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn console_pages_show_queues_tasks_a_task_and_clusters_and_the_filter_form_filters() {
    require_chromium();
    let dir = tempfile::tempdir().unwrap();
    let clusters = repo_root().join("tests/fixtures/clusters-calm.toml");
    let dev = start_dev(dir.path(), &["--clusters", clusters.to_str().unwrap(), "--speed", "5"]);
    let base = format!("http://{}", dev.http);
    for (queue, count) in [("alpha", 3), ("beta", 4)] {
        cli(&dev, &["queue", "create", queue]);
        let file = dir.path().join(format!("{queue}.yaml"));
        let text = format!("tasks:\n  - name: w{queue}\n    count: {count}\n    image: busybox\n    resources: {{cpu: \"4\", memory: 1Gi}}\n    sim: {{duration: 5s}}\n");
        std::fs::write(&file, text).unwrap();
        cli(&dev, &["submit", file.to_str().unwrap(), "--queue", queue, "--task-set", &format!("{queue}-set")]);
    }
    wait_until("every task succeeded", Duration::from_secs(90), || {
        let out = cli(&dev, &["get", "--state", "succeeded"]);
        out.lines().skip(1).filter(|l| !l.trim().is_empty()).count() == 7
    });

    // Queues: both, with a cost; the JavaScript ran and refreshed the live part.
    let dom = dump_dom(&format!("{base}/"), 5000);
    let queues = rows(&dom, "queues");
    assert_eq!(queues.len(), 2, "{queues:?}");
    for (row, name) in queues.iter().zip(["alpha", "beta"]) {
        assert!(row.contains(&format!(">{name}</a>")), "{row}");
        let cost = row.split("class=\"r cost\">").nth(1).and_then(|c| c.split('<').next()).unwrap();
        assert!(cost.starts_with('$') && cost != "$0.00", "{name} shows what it cost: {cost}");
    }
    assert!(dom.contains("<span id=\"updated\">updated "), "console.js refreshed the page in place");

    // Tasks: all seven, newest first, each linking to its page.
    let dom = dump_dom(&format!("{base}/tasks"), 2000);
    let all = rows(&dom, "tasks");
    assert_eq!(all.len(), 7, "{all:?}");
    assert!(all[0].contains("wbeta") && all[6].contains("walpha"), "newest first");

    // The filter form's parameters: only beta's tasks in state succeeded, two per page.
    let dom = dump_dom(&format!("{base}/tasks?queue=beta&task_set=&state=succeeded&cluster=&limit=2"), 2000);
    let page = rows(&dom, "tasks");
    assert_eq!(page.len(), 2, "a page of two: {page:?}");
    assert!(page.iter().all(|r| r.contains("<td>beta</td>") && r.contains(">succeeded<")), "{page:?}");
    assert!(dom.contains("<option selected=\"\">succeeded</option>"), "the form shows the filter it applied");
    let older = dom.split("id=\"older\"").next().and_then(|d| d.rsplit("href=\"").next()).unwrap().split('"').next().unwrap();
    let dom = dump_dom(&format!("{base}{}", older.replace("&amp;", "&")), 2000);
    let rest = rows(&dom, "tasks");
    assert_eq!(rest.len(), 2, "the next page: {rest:?}");
    assert!(rest.iter().all(|r| r.contains("<td>beta</td>")) && rest[0] != page[0]);
    let by_cluster = dump_dom(&format!("{base}/tasks?cluster=calm-a"), 2000);
    assert!(rows(&by_cluster, "tasks").iter().all(|r| r.contains("calm-a/")), "filtered by cluster");

    // One task: its attempt, placement and event timeline.
    let id: u64 = all[0].split("href=\"/tasks/").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
    let dom = dump_dom(&format!("{base}/tasks/{id}"), 2000);
    let attempts = rows(&dom, "attempts");
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(attempts[0].contains("calm-") && attempts[0].contains("succeeded"), "{}", attempts[0]);
    for kind in ["submitted", "leased", "running", "succeeded"] {
        assert!(dom.contains(&format!(">{kind}</b>")), "the timeline has {kind}");
    }
    assert!(dump_dom(&format!("{base}/tasks/999999"), 1000).contains("no task 999999"));

    // Clusters: both, syncing, with their CPU capacity and price.
    let dom = dump_dom(&format!("{base}/clusters"), 2000);
    let cs = rows(&dom, "clusters");
    assert_eq!(cs.len(), 2, "{cs:?}");
    for (row, name) in cs.iter().zip(["calm-a", "calm-b"]) {
        assert!(row.contains(&format!(">{name}</a>")) && row.contains(">ready<") && row.contains("syncing"), "{row}");
        assert!(row.contains("$5.44"), "four $1.36/h nodes: {row}");
    }

    // Nothing from the URL runs: a filter value with markup stays text.
    let dom = dump_dom(&format!("{base}/tasks?queue=%22%3E%3Cscript%3Edocument.title%3D%27pwned%27%3C%2Fscript%3E"), 2000);
    assert!(dom.contains("<title>Tasks · Flotilla</title>") && dom.matches("<script").count() == 1, "{dom}");
}
