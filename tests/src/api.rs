//! Small helpers over the generated gRPC API.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobctl_proto::v1::job_service_client::JobServiceClient;
use jobctl_proto::v1::worker_service_client::WorkerServiceClient;
use jobctl_proto::v1::{
    CompleteRequest, FailRequest, GetStatusRequest, HeartbeatRequest, Job, JobError, JobEvent,
    JobState, LeaseRequest, LeasedJob, RetryPolicy, SubmitRequest, WatchProgressRequest,
    WatchProgressResponse,
};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::wait::eventually;

/// A job client.
pub type JobClient = JobServiceClient<Channel>;
/// A worker client.
pub type WorkerClient = WorkerServiceClient<Channel>;

/// A `google.protobuf.Duration`.
pub fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A `google.protobuf.Timestamp`.
pub fn pb_timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A `google.protobuf.Timestamp` as a `SystemTime`.
pub fn system_time(ts: &prost_types::Timestamp) -> SystemTime {
    let secs = u64::try_from(ts.seconds).unwrap_or(0);
    let nanos = u32::try_from(ts.nanos).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// `a - b` in seconds, negative when `a` is earlier.
pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// A submit request with the given queue, kind and payload and every other
/// field at its default.
pub fn submit_request(queue: &str, kind: &str, payload: impl Into<Vec<u8>>) -> SubmitRequest {
    SubmitRequest {
        queue: queue.into(),
        kind: kind.into(),
        payload: payload.into(),
        ..SubmitRequest::default()
    }
}

/// A retry policy without jitter.
pub fn backoff(initial: Duration, max: Duration, multiplier: f64) -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Some(pb_duration(initial)),
        max_backoff: Some(pb_duration(max)),
        multiplier,
        jitter: 0.0,
    }
}

/// Submits `request` and returns the new job's id.
pub async fn submit(client: &JobClient, request: SubmitRequest) -> String {
    client
        .clone()
        .submit(request)
        .await
        .unwrap_or_else(|s| panic!("submit failed: {s:?}"))
        .into_inner()
        .job_id
}

/// Server flags for a test that counts every progress update its watchers
/// get: a watcher that falls `--watch-coalesce-after` behind gets progress
/// coalesced (right for the product, a flake on a loaded machine for such a
/// test), so here no reader counts as behind by time. Fewer than 32 waiting
/// events never make one behind either.
pub const WATCH_EVERY_UPDATE: [&str; 2] = ["--watch-coalesce-after", "1h"];

/// Opens `WatchProgress(job_id, after_seq)`, which must be accepted.
pub async fn watch(
    client: &JobClient,
    job_id: &str,
    after_seq: u64,
) -> Streaming<WatchProgressResponse> {
    client
        .clone()
        .watch_progress(WatchProgressRequest {
            job_id: job_id.into(),
            after_seq,
        })
        .await
        .unwrap_or_else(|s| panic!("watch_progress({job_id}, {after_seq}) failed: {s:?}"))
        .into_inner()
}

/// Reads a watch stream to its end, which must come (after the terminal
/// event) within a minute and without an error.
pub async fn read_to_end(mut stream: Streaming<WatchProgressResponse>) -> Vec<JobEvent> {
    let mut events = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("the watch ends after the terminal event")
            .unwrap_or_else(|s| panic!("watch stream failed after {events:?}: {s:?}"));
        match next {
            Some(m) => events.push(m.event.expect("a response carries an event")),
            None => return events,
        }
    }
}

/// A job's status, which must exist.
pub async fn get_job(client: &JobClient, job_id: &str) -> Job {
    client
        .clone()
        .get_status(GetStatusRequest {
            job_id: job_id.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("get_status({job_id}) failed: {s:?}"))
        .into_inner()
        .job
        .unwrap_or_else(|| panic!("get_status({job_id}) answered without a job"))
}

/// A job's status, or the error.
pub async fn try_get_job(client: &JobClient, job_id: &str) -> Result<Job, Status> {
    let response = client
        .clone()
        .get_status(GetStatusRequest {
            job_id: job_id.into(),
        })
        .await?;
    response
        .into_inner()
        .job
        .ok_or_else(|| Status::internal("get_status answered without a job"))
}

/// Polls until the job is in `state` and returns it.
pub async fn wait_for_state(
    client: &JobClient,
    job_id: &str,
    state: JobState,
    timeout: Duration,
) -> Job {
    eventually(&format!("job {job_id} to be {state:?}"), timeout, || {
        let client = client.clone();
        let job_id = job_id.to_owned();
        async move {
            let job = try_get_job(&client, &job_id)
                .await
                .map_err(|e| e.to_string())?;
            if job.state() == state {
                Ok(job)
            } else {
                Err(format!(
                    "state {:?} attempt {} error {:?}",
                    job.state(),
                    job.attempt,
                    job.error
                ))
            }
        }
    })
    .await
}

/// A lease request that answers at once.
pub fn lease_request(queue: &str, max_jobs: u32) -> LeaseRequest {
    LeaseRequest {
        worker_id: "test-worker".into(),
        queues: vec![queue.into()],
        max_jobs,
        wait: None,
    }
}

/// Leases up to `max_jobs` from `queue` without waiting.
pub async fn lease(client: &WorkerClient, queue: &str, max_jobs: u32) -> Vec<LeasedJob> {
    client
        .clone()
        .lease(lease_request(queue, max_jobs))
        .await
        .unwrap_or_else(|s| panic!("lease from {queue} failed: {s:?}"))
        .into_inner()
        .jobs
}

/// Polls Lease until a job of `queue` is handed out.
pub async fn lease_one(client: &WorkerClient, queue: &str) -> LeasedJob {
    eventually(
        &format!("a job to lease from {queue}"),
        Duration::from_secs(10),
        || {
            let client = client.clone();
            let queue = queue.to_owned();
            async move {
                let mut jobs = lease(&client, &queue, 1).await;
                jobs.pop().ok_or("nothing to lease")
            }
        },
    )
    .await
}

/// A heartbeat for `leased` with no progress.
pub fn heartbeat_request(leased: &LeasedJob) -> HeartbeatRequest {
    HeartbeatRequest {
        job_id: leased.job_id.clone(),
        lease_token: leased.lease_token.clone(),
        progress: None,
        checkpoint: None,
    }
}

/// A complete request for `leased`.
pub fn complete_request(leased: &LeasedJob, result: &[u8]) -> CompleteRequest {
    CompleteRequest {
        job_id: leased.job_id.clone(),
        lease_token: leased.lease_token.clone(),
        result: result.to_vec(),
    }
}

/// A fail request for `leased`.
pub fn fail_request(leased: &LeasedJob, message: &str, retryable: bool) -> FailRequest {
    FailRequest {
        job_id: leased.job_id.clone(),
        lease_token: leased.lease_token.clone(),
        error: Some(JobError {
            message: message.into(),
            code: "test".into(),
            details: String::new(),
        }),
        retryable,
        retry_after: None,
        checkpoint: None,
    }
}

/// Completes `leased` with `result`, which must be accepted.
pub async fn complete(client: &WorkerClient, leased: &LeasedJob, result: &[u8]) {
    client
        .clone()
        .complete(complete_request(leased, result))
        .await
        .unwrap_or_else(|s| panic!("complete({}) failed: {s:?}", leased.job_id));
}

/// Asserts that `result` is an error with `code`, and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    context: &str,
) -> Status {
    match result {
        Ok(v) => panic!("{context}: expected {code:?}, got Ok({v:?})"),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "{context}: expected {code:?}, got {status:?}"
            );
            status
        }
    }
}

/// Whether the status names `field`, in its message or in its details (such
/// as a `google.rpc.BadRequest` field violation).
pub fn status_mentions(status: &Status, field: &str) -> bool {
    let lower = status.message().to_lowercase();
    if lower.contains(&field.to_lowercase()) {
        return true;
    }
    let details = status.details();
    let needle = field.as_bytes();
    !needle.is_empty() && details.windows(needle.len()).any(|w| w == needle)
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The `<queue>` and `<ulid>` of a job id `<queue>:<ulid>`.
pub fn split_job_id(job_id: &str) -> (&str, &str) {
    job_id
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("job id {job_id:?} is not <queue>:<ulid>"))
}
