//! What a handler knows about the job it runs, and how it talks back.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use jobctl_proto::v1::Progress;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Why a job's cancellation token fired.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// A client cancelled the job; return (any error, ideally
    /// [`HandlerError::cancelled`](crate::HandlerError::cancelled)) and the
    /// job ends `CANCELLED`.
    Requested {
        /// The reason the client gave, possibly empty.
        reason: String,
    },
    /// The worker lost the lease (it expired, or the job was handed to
    /// another worker); whatever the handler returns is discarded.
    LeaseLost,
    /// The job's deadline (its execution timeout) passed.
    DeadlineExceeded,
    /// The worker is shutting down and its grace period is over; the job is
    /// handed back to the queue without using up an attempt.
    Shutdown,
}

impl CancelReason {
    /// Which reason wins when several apply: a client's request decides how
    /// the job ends, so it overrides a deadline.
    fn rank(&self) -> u8 {
        match self {
            CancelReason::DeadlineExceeded => 0,
            CancelReason::Requested { .. } => 1,
            CancelReason::LeaseLost => 2,
            CancelReason::Shutdown => 3,
        }
    }
}

/// A request from [`JobContext::checkpoint_now`] to the job's driver.
pub(crate) struct CheckpointRequest {
    pub(crate) data: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<(), Error>>,
}

/// The leased job as handed to [`JobContext::new`].
pub(crate) struct JobInfo {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) queue: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) labels: HashMap<String, String>,
    pub(crate) trace_context: HashMap<String, String>,
    pub(crate) checkpoint: Option<Vec<u8>>,
    pub(crate) deadline: Option<SystemTime>,
    pub(crate) worker_id: Arc<str>,
}

/// The driver's ends of a job context's channels.
pub(crate) struct ContextChannels {
    pub(crate) progress: watch::Receiver<Option<Progress>>,
    pub(crate) checkpoints: mpsc::Receiver<CheckpointRequest>,
}

struct Inner {
    info: JobInfo,
    token: CancellationToken,
    reason: Mutex<Option<CancelReason>>,
    progress: watch::Sender<Option<Progress>>,
    checkpoints: mpsc::Sender<CheckpointRequest>,
}

/// The job a handler runs: its data, progress reporting, checkpoints and
/// cancellation. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.inner.info.id)
            .field("kind", &self.inner.info.kind)
            .field("queue", &self.inner.info.queue)
            .field("attempt", &self.inner.info.attempt)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl JobContext {
    pub(crate) fn new(info: JobInfo) -> (Self, ContextChannels) {
        let (progress_tx, progress_rx) = watch::channel(None);
        let (checkpoint_tx, checkpoint_rx) = mpsc::channel(4);
        let ctx = Self {
            inner: Arc::new(Inner {
                info,
                token: CancellationToken::new(),
                reason: Mutex::new(None),
                progress: progress_tx,
                checkpoints: checkpoint_tx,
            }),
        };
        let channels = ContextChannels {
            progress: progress_rx,
            checkpoints: checkpoint_rx,
        };
        (ctx, channels)
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.inner.info.id
    }

    /// The job's kind, which chose this handler.
    pub fn kind(&self) -> &str {
        &self.inner.info.kind
    }

    /// The queue the job was leased from.
    pub fn queue(&self) -> &str {
        &self.inner.info.queue
    }

    /// The payload the job was submitted with.
    pub fn payload(&self) -> &[u8] {
        &self.inner.info.payload
    }

    /// This attempt's number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.inner.info.attempt
    }

    /// How many attempts the job may use in all.
    pub fn max_attempts(&self) -> u32 {
        self.inner.info.max_attempts
    }

    /// Whether this is the job's last attempt, so that even a retryable
    /// failure ends it for good.
    pub fn is_last_attempt(&self) -> bool {
        self.inner.info.max_attempts != 0 && self.inner.info.attempt >= self.inner.info.max_attempts
    }

    /// The job's labels.
    pub fn labels(&self) -> &HashMap<String, String> {
        &self.inner.info.labels
    }

    /// The submitter's W3C trace context (`traceparent`, `tracestate`) and
    /// request id, to parent the handler's spans.
    pub fn trace_context(&self) -> &HashMap<String, String> {
        &self.inner.info.trace_context
    }

    /// The last checkpoint an earlier attempt reported, handed over with the
    /// lease so that this attempt can resume.
    pub fn checkpoint(&self) -> Option<&[u8]> {
        self.inner.info.checkpoint.as_deref()
    }

    /// When this attempt must end, if the job has an execution timeout. The
    /// cancellation token fires when it passes.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.inner.info.deadline
    }

    /// The id of the worker running the job.
    pub fn worker_id(&self) -> &str {
        &self.inner.info.worker_id
    }

    /// Reports progress. Never blocks: updates are throttled to one per
    /// `progress_interval` and sent with a heartbeat; the last update before
    /// the handler returns is always delivered before the job ends.
    pub fn progress(&self, progress: Progress) {
        self.inner.progress.send_replace(Some(sanitize(progress)));
    }

    /// Reports progress as a percentage (0 to 100) and a message.
    pub fn set_progress(&self, percent: f64, message: impl Into<String>) {
        self.progress(Progress {
            percent,
            current: 0,
            total: 0,
            message: message.into(),
        });
    }

    /// Reports progress as units done out of a total (the percentage is
    /// derived from them) and a message.
    pub fn set_progress_units(&self, current: u64, total: u64, message: impl Into<String>) {
        let percent = if total == 0 {
            0.0
        } else {
            current as f64 * 100.0 / total as f64
        };
        self.progress(Progress {
            percent,
            current,
            total,
            message: message.into(),
        });
    }

    /// Saves a checkpoint now: sends a heartbeat carrying it (and the latest
    /// progress) and returns once the server has accepted it. The next
    /// attempt, should there be one, finds it in [`JobContext::checkpoint`].
    ///
    /// Transient failures are retried until the server answers; the error
    /// says when it refused the checkpoint (over the size limit, for
    /// example), when the lease was lost, or when the attempt is over.
    pub async fn checkpoint_now(&self, data: Vec<u8>) -> Result<(), Error> {
        let ended = || Error::JobEnded {
            job_id: self.inner.info.id.clone(),
        };
        let (reply, answer) = oneshot::channel();
        self.inner
            .checkpoints
            .send(CheckpointRequest { data, reply })
            .await
            .map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }

    /// A token that fires when the job should stop: a client cancelled it,
    /// the lease was lost, its deadline passed, or the worker is shutting
    /// down. It is a child of the job's token, so cancelling it yourself
    /// affects nobody else.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.token.child_token()
    }

    /// Waits until the job should stop; see [`JobContext::cancellation_token`].
    pub async fn cancelled(&self) {
        self.inner.token.cancelled().await;
    }

    /// Whether the job should stop; see [`JobContext::cancellation_token`].
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Why the cancellation token fired, if it did.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.inner
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Fires the job's token, recording why.
    pub(crate) fn fire(&self, reason: CancelReason) {
        {
            let mut current = self
                .inner
                .reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let replace = current.as_ref().is_none_or(|c| reason.rank() > c.rank());
            if replace {
                *current = Some(reason);
            }
        }
        self.inner.token.cancel();
    }
}

/// Keeps the percentage within 0 to 100 (NaN becomes 0), so a sloppy handler
/// cannot get its heartbeats refused.
fn sanitize(mut progress: Progress) -> Progress {
    progress.percent = if progress.percent.is_nan() {
        0.0
    } else {
        progress.percent.clamp(0.0, 100.0)
    };
    progress
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> (JobContext, ContextChannels) {
        JobContext::new(JobInfo {
            id: "j1".into(),
            kind: "k".into(),
            queue: "q".into(),
            payload: b"p".to_vec(),
            attempt: 2,
            max_attempts: 2,
            labels: HashMap::new(),
            trace_context: HashMap::new(),
            checkpoint: Some(b"cp".to_vec()),
            deadline: None,
            worker_id: Arc::from("w"),
        })
    }

    #[test]
    fn progress_is_clamped_and_the_latest_wins() {
        let (ctx, mut ch) = ctx();
        ctx.set_progress(150.0, "a");
        ctx.set_progress(f64::NAN, "b");
        let p = ch.progress.borrow_and_update().clone();
        let p = p.unwrap_or_default();
        assert_eq!(p.percent, 0.0);
        assert_eq!(p.message, "b");
        ctx.set_progress_units(1, 4, "c");
        assert_eq!(ch.progress.borrow().as_ref().map(|p| p.percent), Some(25.0));
    }

    #[test]
    fn a_cancel_request_overrides_a_deadline_but_not_the_reverse() {
        let (ctx, _ch) = ctx();
        assert!(!ctx.is_cancelled());
        ctx.fire(CancelReason::DeadlineExceeded);
        assert!(ctx.is_cancelled());
        ctx.fire(CancelReason::Requested { reason: "r".into() });
        assert_eq!(
            ctx.cancel_reason(),
            Some(CancelReason::Requested { reason: "r".into() })
        );
        ctx.fire(CancelReason::DeadlineExceeded);
        assert!(matches!(
            ctx.cancel_reason(),
            Some(CancelReason::Requested { .. })
        ));
    }

    #[test]
    fn cancelling_the_handed_out_token_does_not_cancel_the_job() {
        let (ctx, _ch) = ctx();
        ctx.cancellation_token().cancel();
        assert!(!ctx.is_cancelled());
        let token = ctx.cancellation_token();
        ctx.fire(CancelReason::LeaseLost);
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn checkpoint_now_fails_once_the_job_ended() {
        let (ctx, ch) = ctx();
        drop(ch);
        assert!(matches!(
            ctx.checkpoint_now(vec![1]).await,
            Err(Error::JobEnded { .. })
        ));
        assert!(ctx.is_last_attempt());
        assert_eq!(ctx.checkpoint(), Some(&b"cp"[..]));
    }
}
