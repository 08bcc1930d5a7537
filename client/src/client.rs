//! [`Client`]: one connection to a jobctl server, shared by all calls.

use std::time::Duration;

use jobctl_proto::v1::{
    self as pb, JobState, admin_service_client::AdminServiceClient,
    job_service_client::JobServiceClient, schedule_service_client::ScheduleServiceClient,
};
use tonic::transport::Channel;

use crate::connect::{AuthChannel, ConnectOptions, Credentials};
use crate::error::{Error, Result};
use crate::options::SubmitOptions;
use crate::watch::{ReconnectPolicy, Watch, is_terminal_state};

/// How long [`Client::connect`] and a lazy client's first call wait for the
/// TCP connection before giving up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the jobctl `JobService` and `AdminService`.
///
/// It wraps one tonic [`Channel`] (an HTTP/2 connection that reconnects by
/// itself), so it is cheap to clone and clones share the connection. Calls
/// take `&self` and may run concurrently.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    credentials: Credentials,
}

/// The answer to a submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The job's id, new or (when deduplicated) the earlier job's.
    pub job_id: String,
    /// True when the idempotency key was seen before and no new job was made.
    pub deduplicated: bool,
    /// The job's state right after the submit.
    pub state: JobState,
}

impl Client {
    /// Connects to `endpoint` (such as `http://127.0.0.1:50051`) and fails at
    /// once if the server cannot be reached.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client> {
        Self::connect_with(endpoint, ConnectOptions::new()).await
    }

    /// Connects with credentials or TLS settings, such as
    /// `ConnectOptions::new().bearer_token(token)`; fails at once if the
    /// server cannot be reached.
    pub async fn connect_with(
        endpoint: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Client> {
        let endpoint = endpoint.into();
        let (configured, credentials) = options.apply(&endpoint)?;
        let channel = configured
            .connect()
            .await
            .map_err(|source| Error::Transport { endpoint, source })?;
        Ok(Client {
            channel,
            credentials,
        })
    }

    /// A client that connects on its first call (and reconnects as needed);
    /// fails only when `endpoint` is not a valid address.
    pub fn connect_lazy(endpoint: impl Into<String>) -> Result<Client> {
        Self::connect_lazy_with(endpoint, ConnectOptions::new())
    }

    /// [`connect_lazy`](Self::connect_lazy) with credentials or TLS settings.
    pub fn connect_lazy_with(
        endpoint: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Client> {
        let endpoint = endpoint.into();
        let (configured, credentials) = options.apply(&endpoint)?;
        Ok(Client {
            channel: configured.connect_lazy(),
            credentials,
        })
    }

    /// A client over a channel configured by the caller (TLS, timeouts,
    /// load balancing, interceptors in front of it, ...).
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            channel,
            credentials: Credentials::none(),
        }
    }

    /// The same connection, calling with `credentials` (for example
    /// [`Credentials::bearer`]).
    pub fn with_credentials(mut self, credentials: Credentials) -> Client {
        self.credentials = credentials;
        self
    }

    /// The underlying channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    fn transport(&self) -> AuthChannel {
        AuthChannel::new(self.channel.clone(), self.credentials.clone())
    }

    /// The generated `JobService` client on this client's connection (with
    /// its credentials), for calls this type does not wrap.
    pub fn job_service(&self) -> JobServiceClient<AuthChannel> {
        JobServiceClient::new(self.transport())
    }

    /// The generated `ScheduleService` client on this client's connection.
    pub fn schedule_service(&self) -> ScheduleServiceClient<AuthChannel> {
        ScheduleServiceClient::new(self.transport())
    }

    /// The generated `AdminService` client on this client's connection.
    pub fn admin_service(&self) -> AdminServiceClient<AuthChannel> {
        AdminServiceClient::new(self.transport())
    }

    /// Enqueues a job and returns its id at once.
    pub async fn submit(&self, options: SubmitOptions) -> Result<Submitted> {
        let request = options.into_request()?;
        let response = self.job_service().submit(request).await?.into_inner();
        Ok(Submitted {
            state: response.state(),
            job_id: response.job_id,
            deduplicated: response.deduplicated,
        })
    }

    /// Enqueues many jobs of one queue in one call (`SubmitBatch`), all or
    /// none: if any job is refused (a bad field, a limit, an idempotency key
    /// reused for a different request) nothing is written and the error
    /// says which. The answers are in the order of `jobs`; a job whose
    /// idempotency key was seen before is `deduplicated`.
    pub async fn submit_batch(
        &self,
        jobs: impl IntoIterator<Item = SubmitOptions>,
    ) -> Result<Vec<Submitted>> {
        let jobs = jobs
            .into_iter()
            .map(SubmitOptions::into_request)
            .collect::<Result<Vec<_>>>()?;
        let response = self
            .job_service()
            .submit_batch(pb::SubmitBatchRequest { jobs })
            .await?
            .into_inner();
        Ok(response
            .results
            .into_iter()
            .map(|r| Submitted {
                state: r.state(),
                job_id: r.job_id,
                deduplicated: r.deduplicated,
            })
            .collect())
    }

    /// The job's state, progress, attempts and result or error.
    pub async fn status(&self, job_id: &str) -> Result<pb::Job> {
        let request = pb::GetStatusRequest {
            job_id: job_id.to_owned(),
        };
        self.job_service()
            .get_status(request)
            .await?
            .into_inner()
            .job
            .ok_or_else(|| Error::UnexpectedResponse("get status answered without a job".into()))
    }

    /// Cancels a queued job at once, or asks a running job's worker to stop
    /// (then the answer is RUNNING with `cancel_requested`).
    pub async fn cancel(&self, job_id: &str, reason: &str) -> Result<pb::CancelResponse> {
        let request = pb::CancelRequest {
            job_id: job_id.to_owned(),
            reason: reason.to_owned(),
        };
        Ok(self.job_service().cancel(request).await?.into_inner())
    }

    /// One page of a queue's FAILED jobs (dead letters), newest first.
    /// `page_size` 0 asks for the server's default; `page_token` is empty for
    /// the first page, then the previous page's `next_page_token`.
    pub async fn list_failed(
        &self,
        queue: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListFailedResponse> {
        let request = pb::ListFailedRequest {
            queue: queue.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        };
        Ok(self
            .admin_service()
            .list_failed(request)
            .await?
            .into_inner())
    }

    /// Puts a FAILED job back in its queue with a fresh set of attempts and
    /// returns its new state.
    pub async fn requeue(&self, job_id: &str) -> Result<JobState> {
        let request = pb::RequeueRequest {
            job_id: job_id.to_owned(),
        };
        Ok(self
            .admin_service()
            .requeue(request)
            .await?
            .into_inner()
            .state())
    }

    /// The number of a queue's jobs in each state.
    pub async fn queue_stats(&self, queue: &str) -> Result<pb::GetQueueStatsResponse> {
        let request = pb::GetQueueStatsRequest {
            queue: queue.to_owned(),
        };
        Ok(self
            .admin_service()
            .get_queue_stats(request)
            .await?
            .into_inner())
    }

    /// One page of a queue's jobs, as `AdminService.ListJobs` walks them
    /// (filters, order and cursor in `request`; `next_page_token` empty
    /// when the walk is over).
    pub async fn list_jobs(&self, request: pb::ListJobsRequest) -> Result<pb::ListJobsResponse> {
        Ok(self.admin_service().list_jobs(request).await?.into_inner())
    }

    /// Every queue of the caller's namespace with its counts.
    pub async fn list_queues(&self) -> Result<Vec<pb::GetQueueStatsResponse>> {
        Ok(self
            .admin_service()
            .list_queues(pb::ListQueuesRequest {})
            .await?
            .into_inner()
            .queues)
    }

    /// Pauses a queue: it hands out no leases until resumed.
    pub async fn pause_queue(&self, queue: &str) -> Result<()> {
        let request = pb::PauseQueueRequest {
            queue: queue.to_owned(),
        };
        self.admin_service().pause_queue(request).await?;
        Ok(())
    }

    /// Resumes a paused queue.
    pub async fn resume_queue(&self, queue: &str) -> Result<()> {
        let request = pb::ResumeQueueRequest {
            queue: queue.to_owned(),
        };
        self.admin_service().resume_queue(request).await?;
        Ok(())
    }

    /// Deletes a finished job and its history.
    pub async fn delete_job(&self, job_id: &str) -> Result<()> {
        let request = pb::DeleteJobRequest {
            job_id: job_id.to_owned(),
        };
        self.admin_service().delete_job(request).await?;
        Ok(())
    }

    /// Deletes one page of finished jobs matching `request`'s filter.
    pub async fn purge_jobs(&self, request: pb::PurgeJobsRequest) -> Result<pb::PurgeJobsResponse> {
        Ok(self.admin_service().purge_jobs(request).await?.into_inner())
    }

    /// Re-queues up to `limit` dead letters (0: the server's default);
    /// returns how many were re-queued and how many are left.
    pub async fn requeue_failed(&self, queue: &str, limit: u32) -> Result<(u64, u64)> {
        let request = pb::RequeueFailedRequest {
            queue: queue.to_owned(),
            limit,
        };
        let r = self
            .admin_service()
            .requeue_failed(request)
            .await?
            .into_inner();
        Ok((r.requeued, r.remaining))
    }

    /// Follows a job's events after `after_seq` (0 for all of them): first
    /// its history, then live, ending after the terminal event (SUCCEEDED,
    /// FAILED or CANCELLED). A broken stream is resumed transparently with
    /// the [default](ReconnectPolicy::default) reconnection policy; see
    /// [`Watch`] and [`watch_with_policy`](Self::watch_with_policy).
    ///
    /// Fails at once with [`Error::NotFound`] for an unknown job, and with an
    /// `OUT_OF_RANGE` [`Error::Other`] when the events after `after_seq` are
    /// no longer kept (watch from 0, or read the job's status instead).
    pub async fn watch(&self, job_id: &str, after_seq: u64) -> Result<Watch> {
        self.watch_with_policy(job_id, after_seq, ReconnectPolicy::default())
            .await
    }

    /// [`watch`](Self::watch) with its own reconnection policy.
    pub async fn watch_with_policy(
        &self,
        job_id: &str,
        after_seq: u64,
        policy: ReconnectPolicy,
    ) -> Result<Watch> {
        if after_seq > 0 {
            // A job that ended at or before `after_seq` has nothing left to
            // stream, and the server would wait for events that never come.
            // When the server is unavailable right now, skip the check:
            // the watch itself reconnects until it answers.
            match self.status(job_id).await {
                Ok(job) if is_terminal_state(job.state()) && job.last_seq <= after_seq => {
                    return Ok(Watch::ended(self.job_service(), job_id, after_seq));
                }
                Ok(_) => {}
                Err(err) if err.is_retryable() => {}
                Err(err) => return Err(err),
            }
        }
        Watch::start(self.job_service(), job_id, after_seq, policy).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_malformed_address_is_refused_without_a_call() {
        let err = Client::connect_lazy("not a uri").unwrap_err();
        assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err:?}");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable() {
        // Port 1 on loopback: nothing listens there, so the dial is refused.
        let err = Client::connect("http://127.0.0.1:1").await.unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        assert!(err.is_retryable());

        let client = Client::connect_lazy("http://127.0.0.1:1").unwrap();
        let err = client.status("x").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    }
}
