//! The worker's side of the WorkerService: calls with metadata and
//! timeouts, and retrying them.

use std::future::Future;
use std::time::Duration;

use jobctl_proto::v1::worker_service_client::WorkerServiceClient;
use jobctl_proto::v1::{
    CompleteBatchRequest, CompleteBatchResponse, CompleteRequest, CompleteResponse, FailRequest,
    FailResponse, HeartbeatRequest, HeartbeatResponse, LeaseRequest, LeaseResponse, ReleaseRequest,
    ReleaseResponse,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::backoff::{Backoff, Failure, classify};

/// A WorkerService client that adds the configured metadata and a deadline
/// to every call. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Rpc {
    client: WorkerServiceClient<Channel>,
    metadata: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    /// The deadline of every call but `Lease`.
    timeout: Duration,
}

impl Rpc {
    pub(crate) fn new(
        channel: Channel,
        metadata: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
        timeout: Duration,
    ) -> Self {
        Self {
            client: WorkerServiceClient::new(channel),
            metadata,
            timeout,
        }
    }

    async fn call<T, R, F, Fut>(&self, message: T, timeout: Duration, f: F) -> Result<R, Status>
    where
        F: FnOnce(WorkerServiceClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let mut request = Request::new(message);
        for (key, value) in &self.metadata {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        request.set_timeout(timeout);
        // Calls about a job continue the job's trace.
        crate::telemetry::inject_current(request.metadata_mut());
        match tokio::time::timeout(timeout, f(self.client.clone(), request)).await {
            Ok(answer) => answer.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {}ms",
                timeout.as_millis()
            ))),
        }
    }

    /// `Lease`, allowed `timeout` in all (the long-poll wait plus a margin).
    pub(crate) async fn lease(
        &self,
        request: LeaseRequest,
        timeout: Duration,
    ) -> Result<LeaseResponse, Status> {
        self.call(request, timeout, |mut c, r| async move { c.lease(r).await })
            .await
    }

    pub(crate) async fn heartbeat(
        &self,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, Status> {
        self.call(request, self.timeout, |mut c, r| async move {
            c.heartbeat(r).await
        })
        .await
    }

    pub(crate) async fn complete(
        &self,
        request: CompleteRequest,
    ) -> Result<CompleteResponse, Status> {
        self.call(request, self.timeout, |mut c, r| async move {
            c.complete(r).await
        })
        .await
    }

    pub(crate) async fn complete_batch(
        &self,
        request: CompleteBatchRequest,
    ) -> Result<CompleteBatchResponse, Status> {
        self.call(request, self.timeout, |mut c, r| async move {
            c.complete_batch(r).await
        })
        .await
    }

    pub(crate) async fn fail(&self, request: FailRequest) -> Result<FailResponse, Status> {
        self.call(
            request,
            self.timeout,
            |mut c, r| async move { c.fail(r).await },
        )
        .await
    }

    pub(crate) async fn release(&self, request: ReleaseRequest) -> Result<ReleaseResponse, Status> {
        self.call(request, self.timeout, |mut c, r| async move {
            c.release(r).await
        })
        .await
    }
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub(crate) enum GaveUp {
    /// The server refused the call for good (or the lease is stale).
    Refused(Failure, Status),
    /// `stop` fired or the time budget ran out.
    Stopped,
}

/// Calls `f` until it succeeds, the server refuses for good, `stop` fires or
/// `until` passes, backing off between transient failures.
pub(crate) async fn retry<T, F, Fut>(
    op: &'static str,
    stop: Option<&CancellationToken>,
    until: Option<Instant>,
    mut f: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Backoff::rpc();
    loop {
        let answer = tokio::select! {
            biased;
            () = stopped(stop) => return Err(GaveUp::Stopped),
            () = sleep_until_opt(until) => return Err(GaveUp::Stopped),
            answer = f() => answer,
        };
        let status = match answer {
            Ok(value) => return Ok(value),
            Err(status) => status,
        };
        let failure = classify(status.code());
        if failure != Failure::Transient {
            return Err(GaveUp::Refused(failure, status));
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            op,
            code = ?status.code(),
            error = %status.message(),
            retry_in_ms = delay.as_millis() as u64,
            "call failed, retrying"
        );
        tokio::select! {
            biased;
            () = stopped(stop) => return Err(GaveUp::Stopped),
            () = sleep_until_opt(until) => return Err(GaveUp::Stopped),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Resolves when `token` fires; never without one.
pub(crate) async fn stopped(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever without it.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
