"""A client and a worker in Python, generated from proto/ with grpcio-tools,
driving a job end to end against the real jobctl-server on a real Redis:
submit (with a traceparent), lease, heartbeat with progress, complete; a
watcher that sees every event in order up to the terminal one; GetStatus;
and server reflection.
"""

import queue
import threading
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT = 20  # seconds, for any one call
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def unique_queue(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Watcher:
    """WatchProgress in a thread: every event goes to a queue, then None
    when the stream ends (or the error, if it fails)."""

    def __init__(self, stub, pb, job_id):
        self.events = queue.Queue()
        self.call = stub.WatchProgress(
            pb.jobs.WatchProgressRequest(job_id=job_id, after_seq=0), timeout=60
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for response in self.call:
                self.events.put(response.event)
            self.events.put(None)
        except grpc.RpcError as error:  # reported by next()
            self.events.put(error)

    def next(self):
        item = self.events.get(timeout=TIMEOUT)
        if isinstance(item, grpc.RpcError):
            raise item
        return item


def test_reflection_lists_the_jobctl_services(channel, pb):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"jobctl.v1.JobService", "jobctl.v1.WorkerService"} <= services, services
    # The descriptors come with them: a generic client can call the methods.
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(database)
    methods = {m.name for m in pool.FindServiceByName("jobctl.v1.WorkerService").methods}
    assert {"Lease", "Heartbeat", "Complete", "Fail"} <= methods, methods


def test_a_python_client_and_worker_run_a_job_end_to_end(channel, pb):
    jobs = pb.jobs_grpc.JobServiceStub(channel)
    workers = pb.workers_grpc.WorkerServiceStub(channel)
    state = pb.job.JobState
    q = unique_queue("py")

    # Submit, with the caller's trace context: the answer carries a request id.
    submitted, call = jobs.Submit.with_call(
        pb.jobs.SubmitRequest(queue=q, kind="resize", payload=b"photo-1", max_attempts=2),
        metadata=[("traceparent", TRACEPARENT)],
        timeout=TIMEOUT,
    )
    assert submitted.job_id.startswith(q + ":"), submitted.job_id
    assert not submitted.deduplicated
    request_id = dict(call.initial_metadata()).get("x-request-id")
    assert request_id, call.initial_metadata()

    # A watcher from the beginning of the job's history.
    watcher = Watcher(jobs, pb, submitted.job_id)
    seen = [watcher.next()]
    assert seen[0].state == state.JOB_STATE_QUEUED

    # The worker leases it (long poll) and gets the submitter's trace context.
    leased = workers.Lease(
        pb.workers.LeaseRequest(
            worker_id="python-worker",
            queues=[q],
            max_jobs=1,
            wait=duration_pb2.Duration(seconds=5),
        ),
        timeout=TIMEOUT,
    ).jobs
    assert len(leased) == 1
    job = leased[0]
    assert job.job_id == submitted.job_id
    assert (job.kind, job.payload, job.attempt) == ("resize", b"photo-1", 1)
    assert job.trace_context["traceparent"] == TRACEPARENT
    assert job.trace_context["x-request-id"] == request_id
    seen.append(watcher.next())
    assert seen[-1].state == state.JOB_STATE_RUNNING

    # Heartbeats with progress; the watcher sees each one as it happens.
    for percent in (25, 50, 75):
        beat = workers.Heartbeat(
            pb.workers.HeartbeatRequest(
                job_id=job.job_id,
                lease_token=job.lease_token,
                progress=pb.job.Progress(
                    percent=percent, current=percent, total=100, message=f"{percent}% resized"
                ),
            ),
            timeout=TIMEOUT,
        )
        assert not beat.cancel_requested
        event = watcher.next()
        seen.append(event)
        assert event.kind == pb.job.EVENT_KIND_PROGRESS
        assert event.progress.percent == percent
        assert event.progress.message == f"{percent}% resized"

    done = workers.Complete(
        pb.workers.CompleteRequest(
            job_id=job.job_id, lease_token=job.lease_token, result=b"thumbnail-bytes"
        ),
        timeout=TIMEOUT,
    )
    assert done.state == state.JOB_STATE_SUCCEEDED

    # The terminal event, then the stream ends.
    seen.append(watcher.next())
    assert seen[-1].state == state.JOB_STATE_SUCCEEDED
    assert seen[-1].result == b"thumbnail-bytes"
    assert watcher.next() is None
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert all(e.job_id == job.job_id for e in seen)

    # GetStatus tells the same story.
    status = jobs.GetStatus(pb.jobs.GetStatusRequest(job_id=job.job_id), timeout=TIMEOUT).job
    assert status.id == job.job_id
    assert status.queue == q
    assert status.state == state.JOB_STATE_SUCCEEDED
    assert status.attempt == 1
    assert status.max_attempts == 2
    assert status.result == b"thumbnail-bytes"
    assert status.progress.percent == 75

    # Complete is safe to retry: the same call again gets the same answer...
    again = workers.Complete(
        pb.workers.CompleteRequest(
            job_id=job.job_id, lease_token=job.lease_token, result=b"thumbnail-bytes"
        ),
        timeout=TIMEOUT,
    )
    assert again.state == state.JOB_STATE_SUCCEEDED
    # ...while a token that is not the job's is refused.
    with pytest.raises(grpc.RpcError) as refused:
        workers.Complete(
            pb.workers.CompleteRequest(job_id=job.job_id, lease_token="not-the-token"),
            timeout=TIMEOUT,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_errors_carry_their_grpc_codes(channel, pb):
    jobs = pb.jobs_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.RpcError) as missing:
        jobs.GetStatus(
            pb.jobs.GetStatusRequest(job_id="nowhere:01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            timeout=TIMEOUT,
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as invalid:
        jobs.Submit.with_call(
            pb.jobs.SubmitRequest(queue="", kind="k"),
            metadata=[("x-request-id", "py-req-1")],
            timeout=TIMEOUT,
        )
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "queue" in invalid.value.details()
    # The refusal names the request it refused.
    trailing = dict(invalid.value.trailing_metadata() or ())
    initial = dict(invalid.value.initial_metadata() or ())
    assert "py-req-1" in (trailing.get("x-request-id"), initial.get("x-request-id"))
