//! What other tools call (issue 15), through a one-replica server with authentication on
//! (`examples/auth.toml`) and the plaintext probe port: KEDA's external scaler as KEDA calls
//! it (no token), gRPC health without credentials, server reflection, and the Armada API
//! under the same authorization as `flotilla.v1`.

use std::time::Duration;

use flotilla_api::armada::api::{self as armada, queue_service_client::QueueServiceClient, submit_client::SubmitClient};
use flotilla_api::armada::k8s::io::api::core::v1::ResourceRequirements;
use flotilla_api::armada::k8s::io::apimachinery::pkg::api::resource::Quantity;
use flotilla_api::externalscaler::{external_scaler_client::ExternalScalerClient, GetMetricsRequest, ScaledObjectRef};
use flotilla_api::v1::{self, queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_server::{ServerConfig, ServerHandle};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

const ADMIN: &str = "admin-example-token";
const ALICE: &str = "alice-example-token";

struct Server {
    handle: ServerHandle,
    client: Channel,
    probe: Channel,
    _dir: tempfile::TempDir,
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("replica"));
    config.auth_file = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/auth.toml"));
    config.probe_listen = Some("127.0.0.1:0".parse().unwrap());
    let handle = flotilla_server::start(config).await.expect("server starts");
    handle.wait_for_leader(Duration::from_secs(10)).await.expect("a leader");
    let (client, probe) = (connect(handle.local_addr).await, connect(handle.probe_addr.expect("a probe port")).await);
    let spec = v1::QueueSpec { name: "agents".into(), weight: 1.0, ..Default::default() };
    QueuesClient::new(client.clone())
        .create_queue(req(Some(ADMIN), v1::CreateQueueRequest { queue: Some(spec) }))
        .await
        .expect("admin creates agents");
    Server { handle, client, probe, _dir: dir }
}

fn req<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn scaled_object(metadata: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "workers".into(),
        namespace: "default".into(),
        scaler_metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

async fn depth(probe: &Channel, object: &ScaledObjectRef) -> i64 {
    let r = GetMetricsRequest { scaled_object_ref: Some(object.clone()), metric_name: "s0-flotilla-queue-depth".into() };
    let values = ExternalScalerClient::new(probe.clone()).get_metrics(r).await.expect("GetMetrics").into_inner().metric_values;
    assert_eq!(values[0].metric_name, "s0-flotilla-queue-depth", "the metric KEDA asked for");
    values[0].metric_value
}

#[tokio::test]
async fn keda_scaler_reports_a_queues_depth_and_is_active_flips_when_the_queue_empties() {
    let s = server().await;
    let object = scaled_object(&[("queue", "agents"), ("metric", "queued"), ("targetSize", "2")]);
    let mut keda = ExternalScalerClient::new(s.probe.clone());
    let spec = keda.get_metric_spec(object.clone()).await.expect("GetMetricSpec").into_inner().metric_specs;
    assert_eq!((spec[0].metric_name.as_str(), spec[0].target_size), ("flotilla-queue-depth", 2));
    assert_eq!(depth(&s.probe, &object).await, 0);
    assert!(!keda.is_active(object.clone()).await.unwrap().into_inner().result, "an empty queue is not active");
    let mut stream = keda.stream_is_active(object.clone()).await.expect("StreamIsActive").into_inner();
    assert!(!stream.next().await.unwrap().unwrap().result, "the stream starts with the current answer");

    // No executor runs, so submitted tasks stay queued.
    let template = flotilla_api::template_to_proto(&flotilla_tests::simple_template(3));
    let submit = v1::SubmitTasksRequest { queue: "agents".into(), task_set: "s".into(), tasks: vec![template], ..Default::default() };
    TasksClient::new(s.client.clone()).submit_tasks(req(Some(ADMIN), submit)).await.expect("submit");
    assert_eq!(depth(&s.probe, &object).await, 3);
    assert!(keda.is_active(object.clone()).await.unwrap().into_inner().result);
    assert!(stream.next().await.unwrap().unwrap().result, "the stream says when the queue fills");
    let running_too = scaled_object(&[("queue", "agents"), ("metric", "queued-and-running"), ("gpuModel", "H100")]);
    assert_eq!(depth(&s.probe, &running_too).await, 0, "no queued task asks for an H100");

    let cancel = v1::CancelTasksRequest { queue: "agents".into(), task_set: "s".into(), ..Default::default() };
    TasksClient::new(s.client.clone()).cancel_tasks(req(Some(ADMIN), cancel)).await.expect("cancel");
    assert_eq!(depth(&s.probe, &object).await, 0);
    assert!(!keda.is_active(object.clone()).await.unwrap().into_inner().result, "IsActive flips when the queue empties");
    assert!(!stream.next().await.unwrap().unwrap().result, "and so does the stream");

    // On the client port the scaler is authorized like everything else: KEDA sends no token.
    let e = ExternalScalerClient::new(s.client.clone()).is_active(object.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let allowed = ExternalScalerClient::new(s.client.clone()).is_active(req(Some(ADMIN), object.clone())).await;
    assert!(allowed.is_ok(), "{allowed:?}");
    let e = keda.is_active(scaled_object(&[("queue", "nope")])).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = keda.is_active(scaled_object(&[("metric", "queued")])).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().starts_with("scalerMetadata.queue"), "{e:?}");
    s.handle.shutdown().await;
}

async fn health(channel: &Channel, service: &str) -> Result<i32, tonic::Status> {
    let r = HealthCheckRequest { service: service.into() };
    HealthClient::new(channel.clone()).check(r).await.map(|r| r.into_inner().status)
}

#[tokio::test]
async fn grpc_health_answers_serving_without_credentials_on_both_ports() {
    let s = server().await;
    let serving = ServingStatus::Serving as i32;
    // The leader is known; health follows within its check interval.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while health(&s.client, "").await.unwrap() != serving && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for channel in [&s.client, &s.probe] {
        for service in ["", "liveness", "api.Submit", "api.Event", "flotilla.v1.Tasks", "externalscaler.ExternalScaler"] {
            assert_eq!(health(channel, service).await.unwrap(), serving, "{service}");
        }
        assert_eq!(health(channel, "no.such.Service").await.unwrap_err().code(), Code::NotFound);
    }
    s.handle.shutdown().await;
}

/// The services reflection lists, asked with `token`.
async fn reflected_services(channel: &Channel, token: Option<&str>) -> Result<Vec<String>, tonic::Status> {
    let ask = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut answers =
        ServerReflectionClient::new(channel.clone()).server_reflection_info(req(token, futures::stream::iter([ask]))).await?.into_inner();
    match answers.next().await.expect("one answer")?.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_the_public_services_to_authenticated_callers_only() {
    let s = server().await;
    assert_eq!(reflected_services(&s.client, None).await.unwrap_err().code(), Code::Unauthenticated);
    let names = reflected_services(&s.client, Some(ALICE)).await.expect("reflection");
    for expected in [
        "flotilla.v1.Tasks",
        "flotilla.v1.Queues",
        "api.Submit",
        "api.Event",
        "api.QueueService",
        "externalscaler.ExternalScaler",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("flotilla.raft")), "the peer port's Raft service is not listed: {names:?}");
    s.handle.shutdown().await;
}

#[tokio::test]
async fn armada_calls_are_authorized_exactly_like_flotilla_v1() {
    let s = server().await;
    let queue = armada::Queue { name: "ml".into(), priority_factor: 2.0, ..Default::default() };
    let e = QueueServiceClient::new(s.client.clone()).create_queue(req(None, queue.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = QueueServiceClient::new(s.client.clone()).create_queue(req(Some(ALICE), queue.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "creating a queue needs the cluster admin role: {e:?}");
    QueueServiceClient::new(s.client.clone()).create_queue(req(Some(ADMIN), queue)).await.expect("admin creates ml");
    let got =
        QueueServiceClient::new(s.client.clone()).get_queue(req(Some(ADMIN), armada::QueueGetRequest { name: "ml".into() })).await.unwrap();
    assert_eq!(got.into_inner().priority_factor, 2.0);

    // alice may submit to research (a grant in the auth file) but not to agents.
    let item = || armada::JobSubmitRequestItem {
        priority: 1.0,
        pod_spec: Some(flotilla_api::armada::k8s::io::api::core::v1::PodSpec {
            containers: vec![flotilla_api::armada::k8s::io::api::core::v1::Container {
                image: "busybox:1.36".into(),
                resources: Some(ResourceRequirements {
                    requests: [("cpu".to_string(), Quantity { string: "100m".into() })].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let submit = |queue: &str| armada::JobSubmitRequest { queue: queue.into(), job_set_id: "s".into(), job_request_items: vec![item()] };
    let e = SubmitClient::new(s.client.clone()).submit_jobs(req(Some(ALICE), submit("agents"))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let research = v1::QueueSpec { name: "research".into(), weight: 1.0, ..Default::default() };
    QueuesClient::new(s.client.clone()).create_queue(req(Some(ADMIN), v1::CreateQueueRequest { queue: Some(research) })).await.unwrap();
    let ok = SubmitClient::new(s.client.clone()).submit_jobs(req(Some(ALICE), submit("research"))).await.expect("alice submits");
    let job_id = ok.into_inner().job_response_items[0].job_id.clone();
    assert!(job_id.parse::<u64>().is_ok(), "a job id is a task id: {job_id}");
    // A bad field is named in Armada's terms, and nothing is submitted.
    let mut bad = submit("research");
    bad.job_request_items[0].pod_spec.as_mut().unwrap().containers[0].image = String::new();
    let e = SubmitClient::new(s.client.clone()).submit_jobs(req(Some(ALICE), bad)).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().starts_with("job_request_items[0].pod_spec.containers[0].image: "), "{e:?}");
    s.handle.shutdown().await;
}
