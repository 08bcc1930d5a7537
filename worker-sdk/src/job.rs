//! Drives one leased job: runs its handler, heartbeats, forwards progress
//! and checkpoints, and ends the attempt with `Complete`, `Fail` or
//! `Release`.
//!
//! One task per job owns the job's lease, so heartbeats, checkpoints and the
//! final call never race each other. The handler runs in a task of its own,
//! so that a panic or a refusal to stop cannot take the driver down.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jobctl_proto::v1::{
    CompleteRequest, CompleteResponse, FailRequest, HeartbeatRequest, JobState, LeasedJob,
    ReleaseRequest,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{Instrument, Span, debug, error, info, warn};

use crate::Error;
use crate::backoff::{Backoff, Failure, classify};
use crate::completer::{Answer, Completer};
use crate::context::{CancelReason, CheckpointRequest, ContextChannels, JobContext, JobInfo};
use crate::handler::{
    CODE_RESULT_REJECTED, CODE_TIMEOUT, FailFields, HandlerError, HandlerResult, Handlers, Outcome,
    decide, panicked, unknown_kind,
};
use crate::progress::ProgressTracker;
use crate::rpc::{GaveUp, Rpc, retry, sleep_until_opt};
use crate::telemetry;

/// Heartbeat period when the lease does not say its TTL.
const DEFAULT_HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// The shortest heartbeat period, whatever the lease TTL.
const MIN_HEARTBEAT_EVERY: Duration = Duration::from_millis(50);
/// How long a `Release` at shutdown may keep trying.
pub(crate) const RELEASE_BUDGET: Duration = Duration::from_secs(5);

/// What every job of a worker shares.
pub(crate) struct Shared {
    pub(crate) rpc: Rpc,
    pub(crate) handlers: Handlers,
    pub(crate) worker_id: Arc<str>,
    pub(crate) progress_interval: Duration,
    /// How long a handler gets to stop once its token fired.
    pub(crate) stop_grace: Duration,
    /// Batches completions (and leases the next jobs with them), if on.
    pub(crate) completer: Option<Completer>,
}

/// The period of a job's heartbeats: a third of its lease TTL.
pub(crate) fn heartbeat_every(lease_ttl: Option<prost_types::Duration>) -> Duration {
    lease_ttl
        .and_then(|ttl| Duration::try_from(ttl).ok())
        .filter(|ttl| !ttl.is_zero())
        .map_or(DEFAULT_HEARTBEAT_EVERY, |ttl| {
            (ttl / 3).max(MIN_HEARTBEAT_EVERY)
        })
}

/// Runs one leased job to its end. `abandon` fires when the worker's
/// shutdown grace is over: the job is then handed back with `Release`.
/// `slot` is the job's place under the concurrency limit: a successful job
/// hands it to the job leased along with its completion.
pub(crate) async fn run_job(
    shared: Arc<Shared>,
    leased: LeasedJob,
    abandon: CancellationToken,
    slot: Option<OwnedSemaphorePermit>,
) {
    if leased.job_id.is_empty() || leased.lease_token.is_empty() {
        warn!(
            job_id = %leased.job_id,
            "server leased a job without an id or a lease token, ignoring it"
        );
        return;
    }
    let span = telemetry::job_span(
        &leased.job_id,
        &leased.kind,
        &leased.queue,
        leased.attempt,
        &shared.worker_id,
        &leased.trace_context,
    );
    let mut job = Job::new(shared, leased, abandon);
    job.slot = slot;
    job.run().instrument(span).await;
}

/// Hands back a lease without using up an attempt. Logs inside the
/// caller's span, which names the job.
pub(crate) async fn release(rpc: &Rpc, job_id: &str, lease_token: &str) {
    let request = ReleaseRequest {
        job_id: job_id.to_owned(),
        lease_token: lease_token.to_owned(),
        checkpoint: None,
    };
    let until = Instant::now() + RELEASE_BUDGET;
    match retry("release", None, Some(until), || {
        rpc.release(request.clone())
    })
    .await
    {
        Ok(answer) => info!(state = state_name(answer.state), "job handed back"),
        Err(GaveUp::Refused(_, status)) => warn!(
            code = ?status.code(),
            error = %status.message(),
            "release refused"
        ),
        Err(GaveUp::Stopped) => {
            warn!("could not hand the job back, it will run again once its lease expires");
        }
    }
}

/// How the handler's run ended, as the driver saw it.
enum End {
    /// The handler returned (or panicked, or was aborted for not stopping).
    Finished(HandlerResult),
    /// The worker's shutdown grace is over.
    Abandoned,
}

/// What woke the driver.
enum Event {
    Abandoned,
    Joined(Result<HandlerResult, JoinError>),
    Overdue,
    Deadline,
    Progress,
    ProgressClosed,
    Checkpoint(CheckpointRequest),
    Heartbeat,
}

/// Why a heartbeat did not get through.
enum BeatError {
    LeaseLost,
    Refused(Status),
    Transient,
    Stopped,
}

struct Job {
    shared: Arc<Shared>,
    job_id: String,
    lease_token: String,
    ctx: JobContext,
    channels: ContextChannels,
    progress_open: bool,
    tracker: ProgressTracker,
    heartbeat_every: Duration,
    next_heartbeat: Instant,
    heartbeat_backoff: Backoff,
    /// After a failed heartbeat, no other goes out before this.
    retry_not_before: Option<Instant>,
    lease_lost: bool,
    abandon: CancellationToken,
    deadline: Option<Instant>,
    started: Instant,
    slot: Option<OwnedSemaphorePermit>,
}

impl Job {
    fn new(shared: Arc<Shared>, leased: LeasedJob, abandon: CancellationToken) -> Self {
        let now = Instant::now();
        let heartbeat_every = heartbeat_every(leased.lease_ttl);
        let deadline = leased.deadline.and_then(|t| SystemTime::try_from(t).ok());
        let deadline_at = deadline.and_then(|d| match d.duration_since(SystemTime::now()) {
            Ok(left) => now.checked_add(left),
            Err(_) => Some(now),
        });
        let (ctx, channels) = JobContext::new(JobInfo {
            id: leased.job_id.clone(),
            kind: leased.kind,
            queue: leased.queue,
            payload: leased.payload,
            attempt: leased.attempt,
            max_attempts: leased.max_attempts,
            labels: leased.labels,
            trace_context: leased.trace_context,
            checkpoint: leased.checkpoint,
            deadline,
            worker_id: shared.worker_id.clone(),
        });
        Self {
            tracker: ProgressTracker::new(shared.progress_interval),
            shared,
            job_id: leased.job_id,
            lease_token: leased.lease_token,
            ctx,
            channels,
            progress_open: true,
            heartbeat_every,
            next_heartbeat: now + heartbeat_every,
            heartbeat_backoff: Backoff::rpc(),
            retry_not_before: None,
            lease_lost: false,
            abandon,
            deadline: deadline_at,
            started: now,
            slot: None,
        }
    }

    async fn run(mut self) {
        let Some(handler) = self.shared.handlers.get(self.ctx.kind()).cloned() else {
            let e = unknown_kind(self.ctx.kind(), self.shared.handlers.keys());
            warn!("no handler for this kind, failing the job");
            self.finish(Outcome::Fail(e.into_fail())).await;
            return;
        };
        debug!("job started");
        let ctx = self.ctx.clone();
        let mut handle: JoinHandle<HandlerResult> =
            tokio::spawn(async move { handler(ctx).await }.instrument(Span::current()));
        match self.drive(&mut handle).await {
            End::Abandoned => {
                self.ctx.fire(CancelReason::Shutdown);
                handle.abort();
                if self.lease_lost {
                    return;
                }
                warn!("shutdown grace expired, handing the job back");
                release(&self.shared.rpc, &self.job_id, &self.lease_token).await;
            }
            End::Finished(result) => self.conclude(result).await,
        }
    }

    /// Heartbeats and relays progress and checkpoints until the handler ends.
    async fn drive(&mut self, handle: &mut JoinHandle<HandlerResult>) -> End {
        let mut deadline_fired = false;
        let mut stop_by: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if stop_by.is_none() && self.ctx.is_cancelled() {
                stop_by = Some(now.checked_add(self.shared.stop_grace).unwrap_or(now));
            }
            let (progress_due, heartbeat_due) = if self.lease_lost {
                (None, None)
            } else {
                let progress_due = self
                    .tracker
                    .due(now)
                    .map(|due| match self.retry_not_before {
                        Some(not_before) => due.max(not_before),
                        None => due,
                    });
                (progress_due, Some(self.next_heartbeat))
            };
            let deadline = if deadline_fired { None } else { self.deadline };
            let event = tokio::select! {
                biased;
                () = self.abandon.cancelled() => Event::Abandoned,
                joined = &mut *handle => Event::Joined(joined),
                () = sleep_until_opt(stop_by) => Event::Overdue,
                () = sleep_until_opt(deadline) => Event::Deadline,
                changed = self.channels.progress.changed(), if self.progress_open => {
                    if changed.is_ok() { Event::Progress } else { Event::ProgressClosed }
                }
                Some(request) = self.channels.checkpoints.recv() => Event::Checkpoint(request),
                () = sleep_until_opt(progress_due) => Event::Heartbeat,
                () = sleep_until_opt(heartbeat_due) => Event::Heartbeat,
            };
            match event {
                Event::Abandoned => return End::Abandoned,
                Event::Joined(joined) => return End::Finished(handler_result(joined)),
                Event::Overdue => {
                    handle.abort();
                    warn!(
                        grace_ms = self.shared.stop_grace.as_millis() as u64,
                        "handler did not stop after its cancellation, aborted it"
                    );
                    return End::Finished(Err(self.overdue_error()));
                }
                Event::Deadline => {
                    deadline_fired = true;
                    warn!("job deadline passed, cancelling the handler");
                    self.ctx.fire(CancelReason::DeadlineExceeded);
                }
                Event::Progress => self.pull_progress(),
                Event::ProgressClosed => self.progress_open = false,
                Event::Checkpoint(request) => self.checkpoint(request).await,
                Event::Heartbeat => {
                    let _ = self.heartbeat(None, false).await;
                }
            }
        }
    }

    /// Ends the attempt after the handler returned.
    async fn conclude(&mut self, result: HandlerResult) {
        if self.lease_lost {
            info!("handler finished after the lease was lost, discarding its result");
            return;
        }
        // The last progress goes out before the job ends.
        self.pull_progress();
        if self.tracker.is_pending() {
            match self.heartbeat_until_answered(None).await {
                Ok(()) | Err(BeatError::Refused(_) | BeatError::Transient) => {}
                Err(BeatError::LeaseLost) => {
                    info!("lease lost before the job ended, discarding its result");
                    return;
                }
                Err(BeatError::Stopped) => {
                    release(&self.shared.rpc, &self.job_id, &self.lease_token).await;
                    return;
                }
            }
        }
        let reason = self.ctx.cancel_reason();
        self.finish(decide(result, reason.as_ref())).await;
    }

    /// Sends `Complete` or `Fail`, retrying transient failures until the
    /// server answers or the shutdown grace is over.
    async fn finish(&mut self, outcome: Outcome) {
        let fields = match outcome {
            Outcome::Complete(result) => match self.complete(result).await {
                Some(fields) => fields,
                None => return,
            },
            Outcome::Fail(fields) => fields,
        };
        self.fail(fields).await;
    }

    /// Sends `Complete`; if the server refuses the result itself, returns
    /// the `Fail` to send instead.
    async fn complete(&mut self, result: Vec<u8>) -> Option<FailFields> {
        let rpc = &self.shared.rpc;
        let request = CompleteRequest {
            job_id: self.job_id.clone(),
            lease_token: self.lease_token.clone(),
            result,
        };
        // A traced job completes with a call of its own, so that the
        // server's span of it joins the job's trace; the others are batched.
        let completer = self
            .shared
            .completer
            .as_ref()
            .filter(|_| !crate::telemetry::current_is_traced());
        let batched = match completer {
            Some(completer) => {
                let slot = self.slot.take();
                tokio::select! {
                    biased;
                    () = self.abandon.cancelled() => Some(Err(GaveUp::Stopped)),
                    answer = completer.complete(request.clone(), slot) => match answer {
                        Answer::Done(state) => Some(Ok(CompleteResponse { state })),
                        Answer::Refused(status)
                            if classify(status.code()) != Failure::Transient =>
                        {
                            Some(Err(GaveUp::Refused(classify(status.code()), status)))
                        }
                        Answer::Refused(_) => None,
                        Answer::Fallback(slot) => {
                            self.slot = slot;
                            None
                        }
                    },
                }
            }
            None => None,
        };
        let answer = match batched {
            Some(answer) => answer,
            None => {
                retry("complete", Some(&self.abandon), None, || {
                    rpc.complete(request.clone())
                })
                .await
            }
        };
        match answer {
            Ok(answer) => {
                info!(
                    state = state_name(answer.state),
                    elapsed_ms = self.started.elapsed().as_millis() as u64,
                    "job completed"
                );
                None
            }
            Err(GaveUp::Refused(Failure::Refused, status))
                if matches!(
                    status.code(),
                    Code::ResourceExhausted | Code::InvalidArgument
                ) =>
            {
                warn!(
                    code = ?status.code(),
                    error = %status.message(),
                    "server refused the result, failing the job"
                );
                let error = HandlerError::fatal(format!(
                    "the server refused the result: {}",
                    status.message()
                ))
                .with_code(CODE_RESULT_REJECTED);
                Some(error.into_fail())
            }
            Err(GaveUp::Refused(_, status)) => {
                warn!(
                    code = ?status.code(),
                    error = %status.message(),
                    "complete refused, the result is lost"
                );
                None
            }
            Err(GaveUp::Stopped) => {
                warn!("could not complete the job before the shutdown grace expired");
                release(rpc, &self.job_id, &self.lease_token).await;
                None
            }
        }
    }

    async fn fail(&mut self, fields: FailFields) {
        let rpc = &self.shared.rpc;
        let request = FailRequest {
            job_id: self.job_id.clone(),
            lease_token: self.lease_token.clone(),
            retry_after: fields
                .retry_after
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            error: Some(fields.error.clone()),
            retryable: fields.retryable,
            checkpoint: fields.checkpoint,
        };
        let answer = retry("fail", Some(&self.abandon), None, || {
            rpc.fail(request.clone())
        })
        .await;
        match answer {
            Ok(answer) => {
                let state = state_name(answer.state);
                if answer.state == JobState::Cancelled as i32 {
                    info!(state, "job cancelled");
                } else {
                    warn!(
                        state,
                        retryable = fields.retryable,
                        code = %fields.error.code,
                        error = %fields.error.message,
                        "attempt failed"
                    );
                }
            }
            Err(GaveUp::Refused(_, status)) => warn!(
                code = ?status.code(),
                error = %status.message(),
                "fail refused"
            ),
            Err(GaveUp::Stopped) => {
                warn!("could not fail the job before the shutdown grace expired");
                release(rpc, &self.job_id, &self.lease_token).await;
            }
        }
    }

    /// Serves a [`JobContext::checkpoint_now`].
    async fn checkpoint(&mut self, request: CheckpointRequest) {
        let CheckpointRequest { data, reply } = request;
        let answer = if self.lease_lost {
            Err(Error::LeaseLost {
                job_id: self.job_id.clone(),
            })
        } else {
            self.pull_progress();
            match self.heartbeat_until_answered(Some(data)).await {
                Ok(()) => Ok(()),
                Err(BeatError::LeaseLost) => Err(Error::LeaseLost {
                    job_id: self.job_id.clone(),
                }),
                Err(BeatError::Refused(status)) => Err(Error::Rejected {
                    op: "heartbeat",
                    status,
                }),
                // Dropping the reply tells the handler the job is over.
                Err(BeatError::Transient | BeatError::Stopped) => return,
            }
        };
        let _ = reply.send(answer);
    }

    /// Sends a heartbeat carrying `checkpoint` and any pending progress,
    /// retrying transient failures until the server answers or the shutdown
    /// grace is over.
    async fn heartbeat_until_answered(
        &mut self,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<(), BeatError> {
        loop {
            match self.heartbeat(checkpoint.clone(), true).await {
                Err(BeatError::Transient) => {}
                answer => return answer,
            }
            tokio::select! {
                biased;
                () = self.abandon.cancelled() => return Err(BeatError::Stopped),
                () = tokio::time::sleep_until(self.next_heartbeat) => {}
            }
        }
    }

    /// Sends one heartbeat with the progress the throttle lets through (all
    /// pending progress with `force`) and an optional checkpoint.
    async fn heartbeat(
        &mut self,
        checkpoint: Option<Vec<u8>>,
        force: bool,
    ) -> Result<(), BeatError> {
        let now = Instant::now();
        let progress = self.tracker.take(now, force || checkpoint.is_some());
        let has_checkpoint = checkpoint.is_some();
        let request = HeartbeatRequest {
            job_id: self.job_id.clone(),
            lease_token: self.lease_token.clone(),
            progress: progress.clone(),
            checkpoint,
        };
        let answer = tokio::select! {
            biased;
            () = self.abandon.cancelled() => None,
            answer = self.shared.rpc.heartbeat(request) => Some(answer),
        };
        let status = match answer {
            None => {
                if let Some(progress) = progress {
                    self.tracker.restore(progress);
                }
                return Err(BeatError::Stopped);
            }
            Some(Ok(answer)) => {
                self.heartbeat_backoff.reset();
                self.retry_not_before = None;
                self.next_heartbeat = Instant::now() + self.heartbeat_every;
                if answer.cancel_requested
                    && !matches!(
                        self.ctx.cancel_reason(),
                        Some(CancelReason::Requested { .. })
                    )
                {
                    info!(reason = %answer.cancel_reason, "cancellation requested, cancelling the handler");
                    self.ctx.fire(CancelReason::Requested {
                        reason: answer.cancel_reason,
                    });
                }
                return Ok(());
            }
            Some(Err(status)) => status,
        };
        let retry_in = self
            .heartbeat_backoff
            .next_delay()
            .min(self.heartbeat_every);
        self.next_heartbeat = Instant::now() + retry_in;
        self.retry_not_before = Some(self.next_heartbeat);
        match classify(status.code()) {
            Failure::LeaseLost => {
                self.lease_lost = true;
                warn!(
                    code = ?status.code(),
                    error = %status.message(),
                    "lease lost, cancelling the handler; its result will be discarded"
                );
                self.ctx.fire(CancelReason::LeaseLost);
                Err(BeatError::LeaseLost)
            }
            Failure::Transient => {
                if let Some(progress) = progress {
                    self.tracker.restore(progress);
                }
                warn!(
                    code = ?status.code(),
                    error = %status.message(),
                    retry_in_ms = retry_in.as_millis() as u64,
                    "heartbeat failed, retrying"
                );
                Err(BeatError::Transient)
            }
            Failure::Refused => {
                // Most likely the progress or the checkpoint is over a limit:
                // keep the progress only if the checkpoint was the culprit.
                if let Some(progress) = progress.filter(|_| has_checkpoint) {
                    self.tracker.restore(progress);
                }
                warn!(
                    code = ?status.code(),
                    error = %status.message(),
                    "heartbeat refused"
                );
                Err(BeatError::Refused(status))
            }
        }
    }

    /// Moves the handler's latest progress into the throttle.
    fn pull_progress(&mut self) {
        if !self.progress_open {
            return;
        }
        let latest = self.channels.progress.borrow_and_update().clone();
        if let Some(progress) = latest {
            self.tracker.update(progress);
        }
    }

    /// The error reported for a handler aborted for not stopping in time.
    fn overdue_error(&self) -> HandlerError {
        let grace = self.shared.stop_grace.as_secs_f64();
        match self.ctx.cancel_reason() {
            Some(CancelReason::DeadlineExceeded) => HandlerError::retry(format!(
                "job deadline exceeded and the handler did not stop within {grace}s"
            ))
            .with_code(CODE_TIMEOUT),
            Some(
                CancelReason::Requested { .. } | CancelReason::LeaseLost | CancelReason::Shutdown,
            )
            | None => HandlerError::cancelled(),
        }
    }
}

/// The handler's result, or the error of a panicked handler.
fn handler_result(joined: Result<HandlerResult, JoinError>) -> HandlerResult {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let error = panicked(&*e.into_panic());
            error!(error = %error, "handler panicked");
            Err(error)
        }
        Err(_) => Err(HandlerError::retry("handler task was cancelled")),
    }
}

fn state_name(state: i32) -> &'static str {
    JobState::try_from(state).map_or("JOB_STATE_UNKNOWN", |s| s.as_str_name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::CODE_PANIC;

    #[test]
    fn heartbeats_go_every_third_of_the_lease_ttl() {
        let ttl = |secs| {
            Some(prost_types::Duration {
                seconds: secs,
                nanos: 0,
            })
        };
        assert_eq!(heartbeat_every(ttl(30)), Duration::from_secs(10));
        assert_eq!(heartbeat_every(ttl(3)), Duration::from_secs(1));
        assert_eq!(heartbeat_every(None), DEFAULT_HEARTBEAT_EVERY);
        assert_eq!(heartbeat_every(ttl(0)), DEFAULT_HEARTBEAT_EVERY);
        assert_eq!(heartbeat_every(ttl(-5)), DEFAULT_HEARTBEAT_EVERY);
        assert_eq!(
            heartbeat_every(Some(prost_types::Duration {
                seconds: 0,
                nanos: 1_000
            })),
            MIN_HEARTBEAT_EVERY
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_retryable_error() {
        assert_eq!(handler_result(Ok(Ok(vec![1]))), Ok(vec![1]));
        let joined = tokio::spawn(async {
            if true {
                panic!("kaboom");
            }
            Ok(Vec::new())
        })
        .await;
        let error = handler_result(joined).unwrap_err();
        assert!(error.is_retryable());
        assert_eq!(error.code(), Some(CODE_PANIC));
        assert_eq!(error.message(), "handler panicked: kaboom");
    }
}
