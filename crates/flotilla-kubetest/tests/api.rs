//! The API server's semantics, through the real `kube` client: selectors, paging,
//! resourceVersions, watches, 410 Gone, deletes, errors, faults.

mod common;

use std::time::Duration;

use common::*;
use flotilla_kubetest::Kind;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;

fn names(list: &kube::core::ObjectList<Pod>) -> Vec<String> {
    list.items.iter().map(|p| p.metadata.name.clone().unwrap_or_default()).collect()
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists_like_the_api_server() {
    let server = bare().await;
    server.apply(pod("a", "web-1", json!({"app": "web", "tier": "front"}), "Running"));
    server.apply(pod("a", "web-2", json!({"app": "web"}), "Succeeded"));
    server.apply(pod("b", "db-1", json!({"app": "db", "managed-by": "flotilla"}), "Running"));
    let pods: Api<Pod> = Api::all(server.client());
    let list = |s: &'static str, f: &'static str| {
        let pods = pods.clone();
        async move { pods.list(&ListParams::default().labels(s).fields(f)).await.unwrap() }
    };
    assert_eq!(names(&list("app=web", "").await), ["web-1", "web-2"]);
    assert_eq!(names(&list("app in (web,db),tier", "").await), ["web-1"]);
    assert_eq!(names(&list("managed-by!=flotilla", "").await), ["web-1", "web-2"], "!= selects pods without the label");
    assert_eq!(names(&list("!tier", "status.phase!=Succeeded,status.phase!=Failed").await), ["db-1"]);
    assert_eq!(names(&list("", "metadata.namespace=a,metadata.name==web-2").await), ["web-2"]);
    assert_eq!(names(&Api::<Pod>::namespaced(server.client(), "b").list(&ListParams::default()).await.unwrap()), ["db-1"]);

    let Err(kube::Error::Api(status)) = pods.list(&ListParams::default().fields("spec.foo=bar")).await else { panic!("accepted") };
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    assert!(status.message.ends_with("field label not supported: spec.foo"), "{}", status.message);
    let Err(kube::Error::Api(status)) = pods.list(&ListParams::default().labels("app in ()")).await else { panic!("accepted") };
    assert_eq!(status.code, 400);
}

#[tokio::test]
async fn paging_with_continue_serves_a_consistent_snapshot_until_the_token_expires() {
    let server = bare().await;
    for i in 0..5 {
        server.apply(pod("a", &format!("p{i}"), json!({}), "Running"));
    }
    let pods: Api<Pod> = Api::namespaced(server.client(), "a");
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first), ["p0", "p1"]);
    let token = first.metadata.continue_.clone().expect("a continue token");
    // Changes after the first page do not show in the later ones.
    server.delete(Kind::Pod, "a", "p3", flotilla_kubetest::DeleteOptions { grace_period_seconds: Some(0), ..Default::default() }).unwrap();
    server.apply(pod("a", "p9", json!({}), "Running"));
    let second = pods.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(&second), ["p2", "p3"]);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    let third = pods.list(&ListParams::default().limit(2).continue_token(second.metadata.continue_.as_deref().unwrap())).await.unwrap();
    assert_eq!(names(&third), ["p4"]);
    assert!(third.metadata.continue_.as_deref().unwrap_or_default().is_empty());
    assert_eq!(names(&pods.list(&ListParams::default()).await.unwrap()), ["p0", "p1", "p2", "p4", "p9"]);

    server.compact();
    let Err(kube::Error::Api(status)) = pods.list(&ListParams::default().limit(2).continue_token(&token)).await else { panic!("served") };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(status.message.starts_with("The provided continue parameter is too old"));
}

#[tokio::test]
async fn resource_versions_are_global_and_exact_lists_show_the_past() {
    let server = bare().await;
    let created = server.apply(pod("a", "p", json!({}), "Pending"));
    let node = server.apply(node("n1", "8", "0"));
    let rv = |v: &serde_json::Value| v["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(rv(&node) > rv(&created), "one counter for all kinds");
    for field in ["uid", "creationTimestamp", "generation"] {
        assert!(!created["metadata"][field].is_null(), "{field}");
    }
    server.update(Kind::Pod, "a", "p", |p| p["status"]["phase"] = json!("Running")).unwrap();
    let pods: Api<Pod> = Api::namespaced(server.client(), "a");
    let then = pods.list(&ListParams::default().at(&rv(&created).to_string()).matching(kube::api::VersionMatch::Exact)).await.unwrap();
    assert_eq!(then.items[0].status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    let now =
        pods.list(&ListParams::default().at(&rv(&created).to_string()).matching(kube::api::VersionMatch::NotOlderThan)).await.unwrap();
    assert_eq!(now.items[0].status.as_ref().unwrap().phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn a_watch_from_a_compacted_resource_version_ends_with_a_410_error_event() {
    let server = bare().await;
    server.apply(pod("a", "p", json!({}), "Pending"));
    let old = server.resource_version();
    server.update(Kind::Pod, "a", "p", |p| p["status"]["phase"] = json!("Running")).unwrap();
    let pods: Api<Pod> = Api::namespaced(server.client(), "a");
    let events: Vec<_> = pods.watch(&WatchParams::default().timeout(1), &old.to_string()).await.unwrap().take(1).collect().await;
    assert!(
        matches!(&events[0], Ok(WatchEvent::Modified(p)) if p.status.as_ref().unwrap().phase.as_deref() == Some("Running")),
        "{events:?}"
    );

    server.compact();
    let events: Vec<_> = pods.watch(&WatchParams::default().timeout(1), &old.to_string()).await.unwrap().collect().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let Ok(WatchEvent::Error(status)) = &events[0] else { panic!("{events:?}") };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(status.message.starts_with(&format!("too old resource version: {old} (")), "{}", status.message);
}

#[tokio::test]
async fn watch_selectors_send_objects_that_leave_the_selection_as_deleted_and_those_that_join_as_added() {
    let server = bare().await;
    server.apply(pod("a", "p", json!({"team": "x"}), "Pending"));
    let from = server.resource_version();
    server.update(Kind::Pod, "a", "p", |p| p["metadata"]["labels"]["team"] = json!("y")).unwrap();
    server.update(Kind::Pod, "a", "p", |p| p["metadata"]["labels"]["team"] = json!("x")).unwrap();
    server.update(Kind::Pod, "a", "p", |p| p["status"]["phase"] = json!("Running")).unwrap();
    let pods: Api<Pod> = Api::all(server.client());
    let wp = WatchParams::default().labels("team=x").timeout(1).disable_bookmarks();
    let events: Vec<_> = pods.watch(&wp, &from.to_string()).await.unwrap().take(3).try_collect().await.unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Bookmark(_) => "BOOKMARK",
            WatchEvent::Error(_) => "ERROR",
        })
        .collect();
    assert_eq!(kinds, ["DELETED", "ADDED", "MODIFIED"]);
}

#[tokio::test]
async fn idle_watches_get_bookmarks_and_end_at_their_timeout() {
    let server = ApiServer::start(Options { bookmark_interval: Duration::from_millis(50), ..Options::bare() }).await;
    server.apply(pod("a", "p", json!({}), "Pending"));
    let rv = server.resource_version().to_string();
    let pods: Api<Pod> = Api::all(server.client());
    let events: Vec<_> = pods.watch(&WatchParams::default().timeout(1), &rv).await.unwrap().try_collect().await.unwrap();
    assert!(
        !events.is_empty() && events.iter().all(|e| matches!(e, WatchEvent::Bookmark(b) if b.metadata.resource_version == rv)),
        "{events:?}"
    );
}

use flotilla_kubetest::{ApiServer, Options};

#[tokio::test]
async fn a_reflector_whose_watch_expires_relists_and_ends_with_the_right_store() {
    let server = bare().await;
    for i in 0..3 {
        server.apply(pod("a", &format!("p{i}"), json!({"app": "x"}), "Running"));
    }
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(Api::<Pod>::all(server.client()), watcher::Config::default().labels("app=x")));
    let task = tokio::spawn(stream.default_backoff().for_each(|_| async {}));
    store.wait_until_ready().await.unwrap();
    let lists_before = server.requests().iter().filter(|r| r.method == "GET" && !r.is_watch()).count();

    // A watch gap: connections cut, changes made, history compacted, then the watch is let
    // back in from its old resourceVersion.
    server.pause_watches();
    server.drop_connections();
    server.delete(Kind::Pod, "a", "p0", flotilla_kubetest::DeleteOptions { grace_period_seconds: Some(0), ..Default::default() }).unwrap();
    server.update(Kind::Pod, "a", "p1", |p| p["status"]["phase"] = json!("Failed")).unwrap();
    server.apply(pod("a", "p3", json!({"app": "x"}), "Pending"));
    server.update(Kind::Pod, "a", "p2", |p| p["metadata"]["labels"]["app"] = json!("other")).unwrap();
    server.compact();
    server.resume_watches();

    let want = vec![("p1".to_string(), "Failed".to_string()), ("p3".to_string(), "Pending".to_string())];
    eventually("the store to match the server", || {
        let mut got: Vec<(String, String)> = store
            .state()
            .iter()
            .map(|p| (p.metadata.name.clone().unwrap(), p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()))
            .collect();
        got.sort();
        (got == want).then_some(())
    })
    .await;
    let lists_after = server.requests().iter().filter(|r| r.method == "GET" && !r.is_watch()).count();
    assert!(lists_after > lists_before, "the reflector relisted after 410");
    task.abort();
}

#[tokio::test]
async fn a_dropped_connection_resumes_the_watch_without_losing_an_event_or_relisting() {
    let server = bare().await;
    server.apply(pod("a", "p", json!({}), "Pending"));
    let pods: Api<Pod> = Api::all(server.client());
    let mut events = watcher(pods, watcher::Config::default()).applied_objects().boxed();
    let first = events.try_next().await.unwrap().unwrap();
    assert_eq!(first.status.unwrap().phase.as_deref(), Some("Pending"));
    server.pause_watches();
    server.drop_connections();
    server.update(Kind::Pod, "a", "p", |p| p["status"]["phase"] = json!("Running")).unwrap();
    server.resume_watches();
    let next = tokio::time::timeout(Duration::from_secs(10), events.try_next()).await.expect("an event").unwrap().unwrap();
    assert_eq!(next.status.unwrap().phase.as_deref(), Some("Running"));
    let lists = server.requests().iter().filter(|r| r.method == "GET" && !r.is_watch()).count();
    assert_eq!(lists, 1, "resumed from its resourceVersion, no relist");
}

#[tokio::test]
async fn errors_are_status_bodies_worded_like_the_real_server() {
    let server = server().await;
    server.apply(node("n1", "8", "0"));
    let jobs: Api<Job> = Api::namespaced(server.client(), "missing");
    let job: Job = serde_json::from_value(job("missing", "j", "n1", json!({}))).unwrap();
    let Err(kube::Error::Api(s)) = jobs.create(&PostParams::default(), &job).await else { panic!("created") };
    assert_eq!((s.code, s.reason.as_str(), s.message.as_str()), (404, "NotFound", "namespaces \"missing\" not found"));
    server.apply(namespace("missing", None));
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let Err(kube::Error::Api(s)) = jobs.create(&PostParams::default(), &job).await else { panic!("created twice") };
    assert_eq!((s.code, s.reason.as_str(), s.message.as_str()), (409, "AlreadyExists", "jobs.batch \"j\" already exists"));
    let mut invalid = job.clone();
    invalid.metadata.name = Some("k".into());
    invalid.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].image = None;
    let Err(kube::Error::Api(s)) = jobs.create(&PostParams::default(), &invalid).await else { panic!("created") };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(s.message, "Job.batch \"k\" is invalid: spec.template.spec.containers[0].image: Required value");
    let Err(kube::Error::Api(s)) = jobs.get("nope").await else { panic!("found") };
    assert_eq!((s.code, s.message.as_str()), (404, "jobs.batch \"nope\" not found"));

    server.fail_next(2, 500);
    for _ in 0..2 {
        let Err(kube::Error::Api(s)) = jobs.get("j").await else { panic!("not injected") };
        assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    }
    jobs.get("j").await.unwrap();
    // The client retries 503 on its own (kube's default retry policy).
    server.clear_requests();
    server.fail_next(2, 503);
    jobs.get("j").await.unwrap();
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn merge_patches_change_status_only_through_the_status_subresource_and_stale_updates_conflict() {
    let server = bare().await;
    server.apply(pod("a", "p", json!({}), "Pending"));
    let pods: Api<Pod> = Api::namespaced(server.client(), "a");
    let patched = pods
        .patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}, "status": {"phase": "Running"}})))
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["x"], "1");
    assert_eq!(patched.status.as_ref().unwrap().phase.as_deref(), Some("Pending"), "the main resource ignores status");
    let patched = pods.patch_status("p", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}}))).await.unwrap();
    assert_eq!(patched.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    let mut stale = patched.clone();
    stale.metadata.resource_version = Some("1".into());
    let Err(kube::Error::Api(s)) = pods.replace("p", &PostParams::default(), &stale).await else { panic!("replaced") };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn deletes_propagate_to_dependents_background_foreground_or_orphan() {
    let server = server().await;
    server.apply(node("n1", "8", "0"));
    server.apply(namespace("a", None));
    let jobs: Api<Job> = Api::namespaced(server.client(), "a");
    for name in ["bg", "fg", "orphan"] {
        jobs.create(&PostParams::default(), &serde_json::from_value(job("a", name, "n1", json!({}))).unwrap()).await.unwrap();
    }
    for name in ["bg", "fg", "orphan"] {
        let pod = server.pods_of_job("a", name)[0]["metadata"]["name"].as_str().unwrap().to_string();
        server.set_pod_state("a", &pod, flotilla_kubetest::PodState::Running).unwrap();
    }
    jobs.delete("bg", &DeleteParams::background()).await.unwrap();
    assert!(server.get(Kind::Job, "a", "bg").is_none(), "background: the Job goes at once");
    let pod = &server.pods_of_job("a", "bg")[0];
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "and its pod is being deleted with its grace period");
    server.advance(Duration::from_secs(30));
    assert!(server.pods_of_job("a", "bg").is_empty(), "gone after its grace");

    jobs.delete("fg", &DeleteParams::foreground()).await.unwrap();
    let fg = server.get(Kind::Job, "a", "fg").expect("foreground: the Job waits for its pods");
    assert_eq!(fg["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    server.advance(Duration::from_secs(30));
    assert!(server.get(Kind::Job, "a", "fg").is_none() && server.pods_of_job("a", "fg").is_empty());

    jobs.delete("orphan", &DeleteParams::orphan()).await.unwrap();
    assert!(server.get(Kind::Job, "a", "orphan").is_none());
    let pods = server.pods_of_job("a", "orphan");
    assert_eq!(pods.len(), 1, "orphan: the pod stays");
    assert!(pods[0]["metadata"]["deletionTimestamp"].is_null());
    assert_eq!(pods[0]["metadata"]["ownerReferences"], json!([]));
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_the_objects_then_the_initial_events_end_bookmark() {
    let server = bare().await;
    for i in 0..3 {
        server.apply(pod("a", &format!("p{i}"), json!({}), "Running"));
    }
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().streaming_lists();
    let stream = reflector::reflector(writer, watcher(Api::<Pod>::all(server.client()), config));
    let task = tokio::spawn(stream.default_backoff().for_each(|_| async {}));
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready()).await.expect("the initial events ended").unwrap();
    assert_eq!(store.state().len(), 3);
    let watch = server.requests().into_iter().find(|r| r.is_watch()).expect("a watch");
    assert_eq!(watch.query_value("sendInitialEvents"), Some("true"));
    assert!(server.requests().iter().all(|r| r.is_watch()), "no list call");
    task.abort();
}
