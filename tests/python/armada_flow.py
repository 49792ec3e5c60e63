"""Drives Flotilla with the real Armada Python client (armada-client from PyPI).

Run by tests/tests/python.rs against `flotilla dev`:

    python3 tests/python/armada_flow.py 127.0.0.1:50051

It creates a queue, submits 50 jobs (two of them fail on purpose), cancels one, follows the
job set's events until every job is terminal, checks each job's event sequence, resumes a
stream from a message id, and checks that unsupported fields are refused naming the field.
Prints "armada flow: ok" and exits 0 when every check holds; raises otherwise.
"""

import sys
import uuid

import grpc
from armada_client.armada import submit_pb2
from armada_client.client import ArmadaClient
from armada_client.k8s.io.api.core.v1 import generated_pb2 as core_v1
from armada_client.k8s.io.apimachinery.pkg.api.resource import generated_pb2 as resource

JOBS = 50
FAILING = {10, 20}
TERMINAL = {"succeeded", "failed", "cancelled"}
# A job's whole life when nothing goes wrong, in Armada's event names.
HAPPY = ["submitted", "queued", "leased", "pending", "running"]


def pod(image="busybox:1.36", containers=1):
    quantity = {"cpu": resource.Quantity(string="100m"), "memory": resource.Quantity(string="64Mi")}
    container = core_v1.Container(
        name="main",
        image=image,
        args=["sleep", "1"],
        resources=core_v1.ResourceRequirements(requests=quantity, limits=quantity),
    )
    return core_v1.PodSpec(containers=[container] * containers, restartPolicy="Never")


def item(client, i):
    annotations = {"flotilla.io/sim-duration": "10s"}
    if i in FAILING:
        annotations.update({"flotilla.io/sim-exit-code": "3", "flotilla.io/max-attempts": "1"})
    return client.create_job_request_item(priority=1, pod_spec=pod(), annotations=annotations)


def expect_invalid(call, field):
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        assert field in e.details(), (field, e.details())
        return
    raise AssertionError(f"expected INVALID_ARGUMENT naming {field}")


def check_unsupported(client, queue, job_set):
    two = client.create_job_request_item(priority=1, pod_spec=pod(containers=2))
    expect_invalid(lambda: client.submit_jobs(queue, job_set, [two]), "job_request_items[0].pod_spec.containers")
    services = client.create_job_request_item(
        priority=1, pod_spec=pod(), services=[submit_pb2.ServiceConfig(ports=[8080])]
    )
    expect_invalid(lambda: client.submit_jobs(queue, job_set, [services]), "job_request_items[0].services")


def follow(client, queue, job_set, job_ids, cancel_id):
    """Every message of the job set until all jobs are terminal, cancelling one on the way."""
    events = client.get_job_events_stream(queue=queue, job_set_id=job_set)
    terminal = set()
    seen = []
    cancelled = False
    for message in events:
        e = client.unmarshal_event_response(message)
        seen.append((message.id, e.type.value, e.message))
        if not cancelled:
            result = client.cancel_jobs(queue=queue, job_set_id=job_set, job_id=cancel_id)
            assert list(result.cancelled_ids) == [cancel_id], result
            cancelled = True
        if e.type.value in TERMINAL:
            terminal.add(e.message.job_id)
        if terminal >= set(job_ids):
            break
    client.unwatch_events(events)
    return seen


def attempts(kinds):
    """Splits a job's messages after submitted, queued into attempts; each attempt but the last
    ends with lease_returned or preempted and queued (a retry, a requeue or a preemption)."""
    assert kinds[:2] == ["submitted", "queued"], kinds
    runs, run = [], []
    rest = kinds[2:]
    i = 0
    while i < len(rest):
        if rest[i] in ("lease_returned", "preempted"):
            assert rest[i + 1 : i + 2] == ["queued"], kinds
            runs.append(run + [rest[i]])
            run, i = [], i + 2
            continue
        run.append(rest[i])
        i += 1
    return runs, run


def check_sequences(seen, job_ids, cancel_id):
    by_job = {j: [] for j in job_ids}
    keys = []
    for mid, kind, msg in seen:
        seq, k = (int(x) for x in mid.split("-"))
        keys.append((seq, k))
        by_job[msg.job_id].append((kind, msg))
    assert keys == sorted(keys) and len(set(keys)) == len(keys), "message ids increase strictly"
    for index, job in enumerate(job_ids):
        kinds = [k for k, _ in by_job[job]]
        assert sum(k in TERMINAL for k in kinds) == 1 and kinds[-1] in TERMINAL, (job, kinds)
        earlier, last = attempts(kinds)
        for run in earlier:
            assert run[:-1] == HAPPY[2 : 2 + len(run) - 1], (job, kinds)
        if job == cancel_id:
            assert last[:-1] == HAPPY[2 : 2 + len(last) - 1] and last[-1] == "cancelled", (job, kinds)
        elif index in FAILING:
            assert last == HAPPY[2:] + ["failed"], (job, kinds)
            failed = by_job[job][-1][1]
            assert failed.reason, (job, "a failure carries its reason")
            assert dict(failed.exit_codes) == {"main": 3}, (job, failed.exit_codes)
        else:
            assert last == HAPPY[2:] + ["succeeded"], (job, kinds)
        running = [m for k, m in by_job[job] if k == "running"]
        assert all(m.cluster_id and m.node_name for m in running), (job, "running names its cluster and node")


def check_resume(client, queue, job_set, seen):
    """A stream resumed from a message id starts with the message after it."""
    middle = len(seen) // 2
    events = client.get_job_events_stream(queue=queue, job_set_id=job_set, from_message_id=seen[middle][0])
    resumed = []
    for message in events:
        resumed.append(message.id)
        if len(resumed) == len(seen) - middle - 1:
            break
    client.unwatch_events(events)
    assert resumed == [mid for mid, _, _ in seen[middle + 1 :]], "resumed right after the given message"


def main(target):
    client = ArmadaClient(grpc.insecure_channel(target))
    assert client.submit_health().status == 1, "Submit health is SERVING"
    assert client.event_health().status == 1, "Event health is SERVING"
    queue = f"armada-{uuid.uuid4().hex[:8]}"
    job_set = "set-1"

    client.create_queue(client.create_queue_request(name=queue, priority_factor=2, user_owners=["ana"]))
    q = client.get_queue(queue)
    assert (q.name, q.priority_factor, list(q.user_owners)) == (queue, 2.0, ["ana"]), q
    assert queue in [x.name for x in client.get_queues()], "GetQueues streams the new queue"
    check_unsupported(client, queue, job_set)

    response = client.submit_jobs(queue=queue, job_set_id=job_set, job_request_items=[item(client, i) for i in range(JOBS)])
    job_ids = [r.job_id for r in response.job_response_items]
    assert len(job_ids) == JOBS and all(job_ids) and not any(r.error for r in response.job_response_items), response
    cancel_id = job_ids[0]

    seen = follow(client, queue, job_set, job_ids, cancel_id)
    check_sequences(seen, job_ids, cancel_id)
    check_resume(client, queue, job_set, seen)

    kinds = [kind for _, kind, _ in seen]
    print(f"armada flow: ok ({JOBS} jobs, {len(seen)} messages, {kinds.count('succeeded')} succeeded, "
          f"{kinds.count('failed')} failed, {kinds.count('cancelled')} cancelled)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
