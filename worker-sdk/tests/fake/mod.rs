//! An in-process WorkerService that records every call, for testing the
//! worker runtime without Redis or the real server.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use jobctl_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use jobctl_proto::v1::{
    CompleteRequest, CompleteResponse, FailRequest, FailResponse, HeartbeatRequest,
    HeartbeatResponse, JobState, LeaseRequest, LeaseResponse, LeasedJob, ReleaseRequest,
    ReleaseResponse,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

/// Everything the fake knows and saw.
#[derive(Default)]
pub struct State {
    /// Jobs ready to lease.
    pub ready: VecDeque<LeasedJob>,
    /// Lease token of each leased job.
    pub leased: HashMap<String, String>,
    /// Jobs whose cancellation was requested.
    pub cancel: HashSet<String>,
    /// Jobs whose lease the fake pretends has expired.
    pub lost: HashSet<String>,
    /// Refuse every Lease with this code.
    pub refuse_lease: Option<Code>,
    /// Answer this many Complete calls UNAVAILABLE first.
    pub unavailable_completes: u32,
    /// Answer every Heartbeat UNAVAILABLE.
    pub unavailable_heartbeats: bool,
    /// Answer Lease at once, ignoring its wait.
    pub ignore_wait: bool,
    /// Lease this many jobs more than asked for.
    pub extra_jobs: u32,
    pub leases: Vec<LeaseRequest>,
    pub heartbeats: Vec<HeartbeatRequest>,
    pub completes: Vec<CompleteRequest>,
    /// The `traceparent` each Complete carried, by job.
    pub complete_traceparents: HashMap<String, String>,
    pub fails: Vec<FailRequest>,
    pub releases: Vec<ReleaseRequest>,
    /// Every call in order: "lease", "heartbeat:<job>", "complete:<job>", ...
    pub log: Vec<String>,
}

impl State {
    pub fn heartbeats_of(&self, job: &str) -> Vec<&HeartbeatRequest> {
        self.heartbeats.iter().filter(|h| h.job_id == job).collect()
    }
    pub fn completed(&self, job: &str) -> Option<&CompleteRequest> {
        self.completes.iter().find(|c| c.job_id == job)
    }
    pub fn failed(&self, job: &str) -> Option<&FailRequest> {
        self.fails.iter().find(|f| f.job_id == job)
    }
    pub fn released(&self, job: &str) -> Option<&ReleaseRequest> {
        self.releases.iter().find(|r| r.job_id == job)
    }
    /// Whether the job got its final call (Complete, Fail or Release).
    pub fn ended(&self, job: &str) -> bool {
        self.completed(job).is_some() || self.failed(job).is_some() || self.released(job).is_some()
    }
}

#[derive(Default)]
pub struct Fake {
    state: Mutex<State>,
    changed: Notify,
}

impl Fake {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Changes the state and wakes everyone waiting on it.
    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state());
        self.changed.notify_waiters();
        r
    }

    pub fn push(&self, job: LeasedJob) {
        self.update(|s| s.ready.push_back(job));
    }

    /// Waits (up to 10s) until `cond` holds.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&State) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if cond(&self.state()) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            panic!(
                "timed out waiting for {what}; calls: {:?}",
                self.state().log
            );
        }
    }

    fn check_lease(s: &State, job: &str, token: &str) -> Result<(), Status> {
        match s.leased.get(job) {
            None => Err(Status::not_found(format!("job {job} not found"))),
            Some(t) if t != token || s.lost.contains(job) => {
                Err(Status::failed_precondition("stale lease"))
            }
            Some(_) => Ok(()),
        }
    }
}

/// The gRPC face of a shared [`Fake`].
struct Svc(Arc<Fake>);

impl std::ops::Deref for Svc {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.0
    }
}

#[tonic::async_trait]
impl WorkerService for Svc {
    async fn lease(
        &self,
        request: Request<LeaseRequest>,
    ) -> Result<Response<LeaseResponse>, Status> {
        let request = request.into_inner();
        let wait = request
            .wait
            .and_then(|w| Duration::try_from(w).ok())
            .unwrap_or_default();
        let until = tokio::time::Instant::now() + wait;
        let want = request.max_jobs.max(1) as usize;
        self.update(|s| {
            s.leases.push(request.clone());
            s.log.push("lease".into());
        });
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.state();
                if let Some(code) = s.refuse_lease {
                    return Err(Status::new(code, "refused"));
                }
                if !s.ready.is_empty() || s.ignore_wait {
                    let n = (want + s.extra_jobs as usize).min(s.ready.len());
                    let jobs: Vec<LeasedJob> = s.ready.drain(..n).collect();
                    for j in &jobs {
                        s.leased.insert(j.job_id.clone(), j.lease_token.clone());
                    }
                    drop(s);
                    self.changed.notify_waiters();
                    return Ok(Response::new(LeaseResponse { jobs }));
                }
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return Ok(Response::new(LeaseResponse { jobs: Vec::new() }));
            }
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let r = request.into_inner();
        self.update(|s| {
            s.log.push(format!("heartbeat:{}", r.job_id));
            if s.unavailable_heartbeats {
                return Err(Status::unavailable("try again"));
            }
            Fake::check_lease(s, &r.job_id, &r.lease_token)?;
            s.heartbeats.push(r.clone());
            Ok(Response::new(HeartbeatResponse {
                cancel_requested: s.cancel.contains(&r.job_id),
                cancel_reason: "test".into(),
                lease_expires_at: None,
            }))
        })
    }

    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let r = request.into_inner();
        self.update(|s| {
            s.log.push(format!("complete:{}", r.job_id));
            if let Some(traceparent) = traceparent {
                s.complete_traceparents
                    .insert(r.job_id.clone(), traceparent);
            }
            if s.unavailable_completes > 0 {
                s.unavailable_completes -= 1;
                return Err(Status::unavailable("try again"));
            }
            Fake::check_lease(s, &r.job_id, &r.lease_token)?;
            s.leased.remove(&r.job_id);
            s.completes.push(r.clone());
            Ok(Response::new(CompleteResponse {
                state: JobState::Succeeded as i32,
            }))
        })
    }

    async fn fail(&self, request: Request<FailRequest>) -> Result<Response<FailResponse>, Status> {
        let r = request.into_inner();
        self.update(|s| {
            s.log.push(format!("fail:{}", r.job_id));
            Fake::check_lease(s, &r.job_id, &r.lease_token)?;
            s.leased.remove(&r.job_id);
            s.fails.push(r.clone());
            let cancelled = r.error.as_ref().is_some_and(|e| e.code == "cancelled");
            let state = if cancelled {
                JobState::Cancelled
            } else if r.retryable {
                JobState::Scheduled
            } else {
                JobState::Failed
            };
            Ok(Response::new(FailResponse {
                state: state as i32,
                next_run_at: None,
            }))
        })
    }

    async fn complete_batch(
        &self,
        _: Request<jobctl_proto::v1::CompleteBatchRequest>,
    ) -> Result<Response<jobctl_proto::v1::CompleteBatchResponse>, Status> {
        // An older server: the worker completes one by one.
        Err(Status::unimplemented("no CompleteBatch"))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let r = request.into_inner();
        self.update(|s| {
            s.log.push(format!("release:{}", r.job_id));
            Fake::check_lease(s, &r.job_id, &r.lease_token)?;
            s.leased.remove(&r.job_id);
            s.releases.push(r.clone());
            Ok(Response::new(ReleaseResponse {
                state: JobState::Queued as i32,
            }))
        })
    }
}

/// A running fake server; stops when dropped.
pub struct Server {
    pub fake: Arc<Fake>,
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Serves a fake on `addr` (port 0 for any).
pub async fn serve_on(addr: SocketAddr) -> Server {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake::default());
    let stop = CancellationToken::new();
    let service = WorkerServiceServer::new(Svc(fake.clone()));
    let stopped = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped)
            .await;
    });
    Server { fake, addr, stop }
}

pub async fn serve() -> Server {
    serve_on("127.0.0.1:0".parse().unwrap()).await
}

/// A leased job of `kind` with a 3s lease.
pub fn job(id: &str, kind: &str, payload: &[u8]) -> LeasedJob {
    LeasedJob {
        job_id: id.into(),
        lease_token: format!("{id}-token"),
        queue: "q".into(),
        kind: kind.into(),
        payload: payload.to_vec(),
        attempt: 1,
        max_attempts: 3,
        checkpoint: None,
        lease_expires_at: None,
        lease_ttl: Some(prost_types::Duration {
            seconds: 3,
            nanos: 0,
        }),
        labels: HashMap::from([("team".to_owned(), "a".to_owned())]),
        deadline: None,
        trace_context: HashMap::new(),
    }
}

/// A deadline `after` from now, as the server would send it.
pub fn deadline_in(after: Duration) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(SystemTime::now() + after))
}

/// Runs `worker` in a task until the returned token is cancelled.
pub fn spawn<W>(
    run: impl FnOnce(CancellationToken) -> W,
) -> (CancellationToken, tokio::task::JoinHandle<W::Output>)
where
    W: Future + Send + 'static,
    W::Output: Send + 'static,
{
    let stop = CancellationToken::new();
    let handle = tokio::spawn(run(stop.clone()));
    (stop, handle)
}
