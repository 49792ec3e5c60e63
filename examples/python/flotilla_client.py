"""Calling Flotilla's own API (flotilla.v1) from Python with grpcio.

The stubs are generated from the repository's .proto files when the script starts (with
grpcio-tools, into a temporary directory), so they always match the server's API:

    python3 -m pip install grpcio grpcio-tools
    flotilla dev &                      # or any server
    python3 examples/python/flotilla_client.py --server 127.0.0.1:50051 [--token TOKEN]

It creates a queue (if missing), submits three tasks, watches their events until each one
has finished, and exits 0 when all succeeded. See docs/clients.md.
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"
FILES = ["flotilla/v1/common.proto", "flotilla/v1/queues.proto", "flotilla/v1/tasks.proto"]
TERMINAL = {"succeeded", "failed", "cancelled"}


def generate_stubs():
    """Compiles the .proto files into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="flotilla-stubs-")
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *FILES]
    if protoc.main(args) != 0:
        sys.exit(f"generating stubs from {PROTO_ROOT} failed")
    sys.path.insert(0, out)
    names = ["flotilla.v1.queues_pb2", "flotilla.v1.queues_pb2_grpc", "flotilla.v1.tasks_pb2", "flotilla.v1.tasks_pb2_grpc"]
    return [importlib.import_module(n) for n in names]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--token", help="bearer token, when the server has an auth file")
    parser.add_argument("--queue", default="python-example")
    a = parser.parse_args()
    queues_pb2, queues_grpc, tasks_pb2, tasks_grpc = generate_stubs()

    channel = grpc.insecure_channel(a.server)
    metadata = [("authorization", f"Bearer {a.token}")] if a.token else []
    queues = queues_grpc.QueuesStub(channel)
    tasks = tasks_grpc.TasksStub(channel)

    spec = queues_pb2.QueueSpec(name=a.queue, weight=1.0)
    try:
        queues.CreateQueue(queues_pb2.CreateQueueRequest(queue=spec), metadata=metadata)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise

    template = tasks_pb2.TaskTemplate(
        name="hello",
        count=3,
        image="busybox:1.36",
        command=["sh", "-c", "echo hello from $FLOTILLA_TASK_INDEX"],
        resources={"cpu": "100m", "memory": "64Mi"},
        sim=tasks_pb2.SimTemplate(duration="5s"),
    )
    submitted = tasks.SubmitTasks(
        tasks_pb2.SubmitTasksRequest(queue=a.queue, task_set="hello", tasks=[template]), metadata=metadata
    )
    ids = set(submitted.task_ids)
    print(f"submitted tasks {sorted(ids)}")

    states = {}
    watch = tasks.Watch(tasks_pb2.WatchRequest(queue=a.queue, task_set="hello", from_seq=1), metadata=metadata)
    for event in watch:
        if event.task_id not in ids:
            continue  # an earlier run of this example in the same task set
        print(f"seq {event.seq}: task {event.task_id} {event.kind} {event.cluster} {event.node} {event.reason}".rstrip())
        if event.state in TERMINAL:
            states[event.task_id] = event.state
        if len(states) == len(ids):
            watch.cancel()
            break
    ok = all(s == "succeeded" for s in states.values())
    print("all tasks succeeded" if ok else f"not all tasks succeeded: {states}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
